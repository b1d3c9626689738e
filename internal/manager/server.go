// Package manager serves the REST API: it validates requests, writes
// desired state and Operation records to the store and answers from it. It
// never talks to QEMU: the agent owning a VM carries operations out.
package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	v1 "hangar/api/v1"
	"hangar/internal/access"
	"hangar/internal/audit"
	"hangar/internal/errdefs"
	"hangar/internal/hostapi"
	"hangar/internal/imports"
	"hangar/internal/inventory"
	"hangar/internal/master"
	"hangar/internal/scheduler"
	"hangar/internal/secrets"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
	"hangar/internal/webui"
)

// Consoles gives access to VMs' serial consoles on their hosts.
type Consoles interface {
	OpenConsole(ctx context.Context, name string) (net.Conn, error)
	SerialLogPath(name string) string
}

// Volumes answers questions about pool volumes (the host agent).
type Volumes interface {
	VolumeInfo(ctx context.Context, ref string) (v1.Volume, error)
	// CheckSource applies the host path policy (storage.HostPaths) to a
	// file named as an image, ISO or import source.
	CheckSource(ctx context.Context, kind storage.SourceKind, path string) (storage.HostFile, error)
	// DiskInfo describes the pool volume at a VM disk's path.
	DiskInfo(ctx context.Context, path string) (v1.Volume, error)
	// Dependents lists the volumes built on a volume ("pool/name").
	Dependents(ctx context.Context, ref string) ([]string, error)
	// DeleteTemplate removes a template's volumes and record; it refuses
	// while linked clones use them.
	DeleteTemplate(ctx context.Context, t v1.Template) error
}

// Config of the API server.
type Config struct {
	Store    store.Store
	Consoles Consoles
	Volumes  Volumes
	Pools    Pools
	// Secrets seals cloud-init user-data before it is stored (nil: kept
	// as given).
	Secrets *secrets.Box
	Log     *slog.Logger
	// Metrics adds the host agents' per-VM usage to /metrics (nil: none).
	Metrics prometheus.Collector
	// Usage reads this host's VMs' usage and history (nil: those routes
	// answer 412).
	Usage Usage
	// MaxWait bounds ?wait= (default 10 min).
	MaxWait time.Duration
	// Forward sends host-local requests about another host (a VM's console
	// and serial log, a host's own volumes) to that host's API (nil: one
	// host, everything is served here).
	Forward *hostapi.Forwarder
	// PoolAdmin serves join tokens, joins, credentials and host removal
	// (nil: those routes answer 412).
	PoolAdmin PoolAdmin
	// Access keeps users, tokens, sessions and console tickets (nil: one
	// on Store).
	Access *access.Store
	// Audit records mutating requests (nil: one on Store with the default
	// retention).
	Audit *audit.Log
	// Logins locks logins after repeated failures (nil: the defaults, the
	// counts in Store).
	Logins *access.Limiter
}

// Server is the API server.
type Server struct {
	cfg    Config
	inv    inventory.Inventory
	mux    *http.ServeMux
	csrf   *http.CrossOriginProtection
	routes []string // patterns, for the OpenAPI coverage test
	// alertSince is when this server first saw the storage-low alerts
	// active now (alerts.go).
	alertSince firstSeen
	// Event stream timings (events.go): pings, the least time between
	// two host/pool/alert recomputations, a stream's longest life.
	pingEvery, hostsEvery, streamLimit time.Duration
	view                               sharedView // the event streams' capacity and alerts (events.go)
	// streams ends every event stream (CloseStreams).
	streams     context.Context
	stopStreams context.CancelFunc
}

// CloseStreams ends the open event streams (GET /api/v1/events), so that
// an http.Server's Shutdown need not wait for them: register it with
// RegisterOnShutdown. Their clients reconnect to another host.
func (s *Server) CloseStreams() { s.stopStreams() }

func (s *Server) route(pattern string, h http.HandlerFunc) {
	s.routes = append(s.routes, pattern)
	s.mux.HandleFunc(pattern, h)
}

// New builds the server and its routes.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 10 * time.Minute
	}
	if cfg.Access == nil {
		cfg.Access = &access.Store{S: cfg.Store}
	}
	if cfg.Audit == nil && cfg.Store != nil {
		cfg.Audit = &audit.Log{S: cfg.Store, Log: cfg.Log}
	}
	if cfg.Logins == nil {
		cfg.Logins = &access.Limiter{S: cfg.Store}
	}
	s := &Server{cfg: cfg, inv: inventory.Inventory{S: cfg.Store}, mux: http.NewServeMux(), csrf: http.NewCrossOriginProtection(),
		pingEvery: defaultPingEvery, hostsEvery: defaultHostsEvery, streamLimit: defaultStreamLimit}
	s.streams, s.stopStreams = context.WithCancel(context.Background())
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{inv: s.inv, capacity: s.capacity}, prometheus.NewGoCollector())
	if cfg.Metrics != nil {
		reg.MustRegister(cfg.Metrics)
	}
	m := s.mux
	s.route("GET /api/v1/vms", s.listVMs)
	s.route("POST /api/v1/vms", s.createVM)
	s.route("GET /api/v1/vms/{name}", s.getVM)
	s.route("PATCH /api/v1/vms/{name}", s.patchVM)
	s.route("DELETE /api/v1/vms/{name}", s.deleteVM)
	s.route("POST /api/v1/vms/{name}/{action}", s.vmAction)
	s.route("GET /api/v1/vms/{name}/console", s.console)
	s.route("GET /api/v1/vms/{name}/console/log", s.consoleLog)
	s.route("GET /api/v1/operations", s.listOps)
	s.route("GET /api/v1/operations/{id}", s.getOp)
	s.route("DELETE /api/v1/operations/{id}", s.cancelOp)
	s.route("GET /api/v1/hosts", s.listHosts)
	s.route("GET /api/v1/hosts/{name}", s.getHost)
	s.route("GET /api/v1/capacity", s.getCapacity)
	s.route("POST /api/v1/hosts/{name}/check-sources", s.checkSourcesHere)
	s.route("GET /api/v1/version", s.getVersion)
	s.storageRoutes()
	s.poolRoutes()
	s.volumeRoutes()
	s.maintenanceRoutes()
	s.settingsRoutes()
	s.liveRoutes()
	s.route("GET /api/v1/openapi.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(v1.OpenAPI)
	})
	s.accessRoutes()
	s.routes = append(s.routes, "GET /metrics")
	m.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ui := webui.Handler()
	s.route("GET /{$}", ui.ServeHTTP)
	s.route("GET /ui/", ui.ServeHTTP)
	s.route("GET /healthz", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	return s
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	e := errdefs.ToAPI(err)
	writeJSON(w, errdefs.HTTPStatus(e.Code), v1.ErrorResponse{Error: e})
}

// maxDecode bounds what decode reads when the edge set no limit.
const maxDecode = 1 << 20

// decode reads a JSON body strictly: unknown fields (also in another case:
// "MemoryMiB"), duplicate keys and wrong types are errors naming the field;
// a body over the route's limit is 413.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxDecode+1))
	if err != nil {
		var me *http.MaxBytesError
		if errors.As(err, &me) {
			return tooLarge(me.Limit)
		}
		return &v1.Error{Code: v1.CodeInvalidArgument, Field: "body", Message: "body: " + err.Error()}
	}
	if len(body) > maxDecode {
		return tooLarge(maxDecode)
	}
	if p, err := duplicateKey(body); err != nil {
		return &v1.Error{Code: v1.CodeInvalidArgument, Field: "body", Message: "body: " + err.Error()}
	} else if p != "" {
		return &v1.Error{Code: v1.CodeInvalidArgument, Field: p, Message: fmt.Sprintf("%s: duplicate key", p)}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te):
			f := te.Field
			if p := typeErrorPath(body, reflect.TypeOf(v)); p != "" {
				f = p
			}
			if f == "" {
				f = "body"
			}
			return &v1.Error{Code: v1.CodeInvalidArgument, Field: f,
				Message: fmt.Sprintf("%s: must be a %s, got %s", f, te.Type, te.Value)}
		case errors.As(err, &se), errors.Is(err, io.ErrUnexpectedEOF):
			return &v1.Error{Code: v1.CodeInvalidArgument, Field: "body", Message: "body: malformed JSON: " + err.Error()}
		case errors.Is(err, io.EOF):
			return &v1.Error{Code: v1.CodeInvalidArgument, Field: "body", Message: "body: empty, want a JSON object"}
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			if p, _ := unknownFieldPath(body, reflect.TypeOf(v)); p != "" {
				f = p
			}
			return &v1.Error{Code: v1.CodeInvalidArgument, Field: f, Message: fmt.Sprintf("%s: unknown field", f)}
		default:
			return &v1.Error{Code: v1.CodeInvalidArgument, Field: "body", Message: "body: " + err.Error()}
		}
	}
	if dec.More() {
		return &v1.Error{Code: v1.CodeInvalidArgument, Field: "body", Message: "body: more than one JSON value"}
	}
	// encoding/json matches keys to fields without regard to case; the API
	// takes them only as documented.
	if p, want := unknownFieldPath(body, reflect.TypeOf(v)); p != "" {
		msg := fmt.Sprintf("%s: unknown field", p)
		if want != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", want)
		}
		return &v1.Error{Code: v1.CodeInvalidArgument, Field: p, Message: msg}
	}
	return nil
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	vms, err := s.inv.VMList(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	seen := vms[:0]
	for _, v := range vms {
		if mayRead(r.Context(), access.VMRef{Name: v.Spec.Name, Tags: v.Spec.Tags}) {
			seen = append(seen, v)
		}
	}
	writeJSON(w, 200, redactVMs(seen))
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return
	}
	v, err := s.inv.VM(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, redactVM(v))
}

// hosts are the pool's hosts with their capacity at this moment.
func (s *Server) hosts(ctx context.Context) ([]v1.Host, error) {
	c, err := s.capacity(ctx)
	if err != nil {
		return nil, err
	}
	return c.Hosts, nil
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var spec v1.VMSpec
	if err := decode(r, &spec); err != nil {
		writeErr(w, err)
		return
	}
	start, err := boolParam(r.URL.Query().Get("start"), "start")
	if err != nil {
		writeErr(w, err)
		return
	}
	wait, err := s.waitParam(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if spec.Host != "" || spec.UUID != "" {
		f := "host"
		if spec.UUID != "" {
			f = "uuid"
		}
		writeErr(w, &v1.Error{Code: v1.CodeInvalidArgument, Field: f, Message: f + ": set by hangar, not by the request"})
		return
	}
	if spec.Parked {
		writeErr(w, invalidArg("parked", "set by the pool master, not by the request"))
		return
	}
	if spec.CloudInit != nil && spec.CloudInit.UserDataSHA256 != "" {
		writeErr(w, invalidArg("cloudInit.userDataSHA256", "set by hangar in answers, not by the request (give cloudInit.userData)"))
		return
	}
	if spec.CloudInit != nil && spec.CloudInit.UserDataSealed != "" {
		writeErr(w, invalidArg("cloudInit.userDataSealed", "set by hangar, not by the request (give cloudInit.userData)"))
		return
	}
	op, err := s.create(r.Context(), spec, start, "")
	if err != nil {
		writeErr(w, err)
		return
	}
	s.answerOp(w, r, op, wait)
}

// create validates and places a new VM and records it with its create
// operation in one transaction. host, when set, pins the placement (a clone
// or a linked deploy must land where its source volumes are).
func (s *Server) create(ctx context.Context, spec v1.VMSpec, start bool, host string) (v1.Operation, error) {
	return s.createWarned(ctx, spec, start, host, nil)
}

// localPin is the host a new VM must run on because a disk of it is a
// volume of that host's own pool (local-<host>), attached or cloned from
// ("": none; host when the create is already pinned there). Disks on two
// hosts' own pools, or on another host than the pin, are refused.
func localPin(spec v1.VMSpec, host string) (string, error) {
	pin, from := host, "the create's host"
	for i, d := range spec.Disks {
		ref, field := d.Volume, fmt.Sprintf("disks[%d].volume", i)
		if d.Clone != nil {
			ref, field = d.Clone.Volume, fmt.Sprintf("disks[%d].clone.volume", i)
		}
		pool, _, _ := strings.Cut(ref, "/")
		h, ok := storage.LocalPoolHost(pool)
		switch {
		case !ok:
		case pin == "":
			pin, from = h, field
		case pin != h:
			return "", invalidArg(field, "%s is host %s's own pool, and %s is on host %s: a vm runs on one host", pool, h, from, pin)
		}
	}
	return pin, nil
}

// newVM is a VM to create: its spec, whether to start it, the host that
// pins it ("" for the master's choice) and the warnings its operation
// records.
type newVM struct {
	spec     v1.VMSpec
	start    bool
	host     string
	warnings []string
}

// createWarned is create recording warnings in the operation.
func (s *Server) createWarned(ctx context.Context, spec v1.VMSpec, start bool, host string, warnings []string) (v1.Operation, error) {
	ops, err := s.createAll(ctx, []newVM{{spec: spec, start: start, host: host, warnings: warnings}})
	if err != nil {
		return v1.Operation{}, err
	}
	return ops[0], nil
}

// createAll is create for several VMs at once (a vApp's): every one is
// validated and placed in a dry run first, then all are recorded with
// their create operations in one transaction, so that either all exist or
// none.
func (s *Server) createAll(ctx context.Context, vms []newVM) ([]v1.Operation, error) {
	hosts, err := s.hosts(ctx)
	if err != nil {
		return nil, err
	}
	var writes []store.Op
	var ops []v1.Operation
	var names []string
	for _, n := range vms {
		spec, start, host := n.spec, n.start, n.host
		if err := vm.ValidateName("name", spec.Name); err != nil {
			return nil, err
		}
		noteVM(ctx, spec.Name)
		if err := mayCreate(ctx, spec); err != nil {
			return nil, err
		}
		if spec.CPUModel == "" {
			spec.CPUModel = poolCPUModel(hosts)
		}
		if start {
			spec.Power = v1.PowerRunning
		}
		vm.Defaults(&spec, "tcg") // the CPU model is set: the accelerator chooses nothing more
		if spec.Power == v1.PowerPaused {
			return nil, &v1.Error{Code: v1.CodeInvalidArgument, Field: "power", Message: "power: a new vm is running or stopped"}
		}
		start = spec.Power == v1.PowerRunning
		if err := vm.Validate(spec, scheduler.LargestHostMemory(hosts)); err != nil {
			return nil, err
		}
		// Disks on a host's own pool pin the VM to that host.
		if host, err = localPin(spec, host); err != nil {
			return nil, err
		}
		// The disks' files are checked where the VM will run when that is known
		// now (a pinned create, manual placement on one host), else here.
		if err := s.checkSourcesOn(ctx, knownHost(spec, host), spec); err != nil {
			return nil, err
		}
		if err := checkHugepages(hosts, spec, knownHost(spec, host)); err != nil {
			return nil, err
		}
		// A dry run of the placement answers at once when no host could take
		// the VM; the pool master places it for real (it alone books hosts).
		if err := s.couldPlace(ctx, hosts, spec, host); err != nil {
			return nil, err
		}
		spec.Host = ""
		spec.UUID = uuid.NewString()
		s.sealCloudInit(&spec)
		op := s.newOp("create", spec.Name, "", v1.CreateArgs{Start: start, Host: host})
		op.Warnings = n.warnings
		writes = append(append(writes, inventory.NewOpWrites(op)...),
			store.PutOp(inventory.VMKey(spec.Name), inventory.Marshal(spec), store.MustNotExist))
		ops = append(ops, op)
		names = append(names, strconv.Quote(spec.Name))
	}
	_, err = s.cfg.Store.Txn(ctx, nil, writes...)
	if errors.Is(err, store.ErrConflict) {
		if len(names) == 1 {
			return nil, &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: vm %s already exists", names[0])}
		}
		return nil, &v1.Error{Code: v1.CodeConflict, Field: "name", Message: fmt.Sprintf("name: one of vms %s already exists (none was created)", strings.Join(names, ", "))}
	}
	if err != nil {
		return nil, err
	}
	for i, op := range ops {
		s.cfg.Log.Info("vm create accepted", "vm", vms[i].spec.Name, "host", vms[i].host, "op", op.ID)
	}
	return ops, nil
}

// checkSources checks what a new VM's disks come from, as far as it can be
// checked before the work is accepted: host files pass the host path policy
// (pools and import directories) and are what they claim (an image
// standalone or, in a pool, with its chain inside; an import's headers), pool
// volumes exist with their chains inside their pools, and a volume another
// VM uses is shared only when both say so. (Single host: the files are on
// this machine; a pool's hosts will check them on the chosen host.)
func (s *Server) checkSources(ctx context.Context, spec v1.VMSpec) error {
	var vms []v1.VM
	for i, d := range spec.Disks {
		f := fmt.Sprintf("disks[%d]", i)
		switch {
		case d.Media == "cdrom" && d.Image != "":
			if err := s.checkMedium(ctx, f+".image", d.Image); err != nil {
				return err
			}
		case d.Image != "":
			hf, err := s.cfg.Volumes.CheckSource(ctx, storage.SourceImage, d.Image)
			if err != nil {
				return errdefs.Field(f+".image", err)
			}
			var size int64
			if hf.Pool != nil {
				vol, err := s.cfg.Volumes.VolumeInfo(ctx, hf.Pool.Name+"/"+hf.Name)
				if err != nil {
					return errdefs.Field(f+".image", err)
				}
				size = vol.VirtualSize
			} else {
				if err := storage.CheckStandalone(ctx, hf.Path); err != nil {
					return errdefs.Field(f+".image", err)
				}
				info, err := storage.Info(ctx, hf.Path)
				if err != nil {
					return errdefs.Field(f+".image", err)
				}
				size = info.VirtualSize
			}
			if d.SizeMiB > 0 && d.SizeMiB<<20 < size {
				return errdefs.Field(f+".sizeMiB", fmt.Errorf("%d MiB is smaller than the image (%d MiB): disks only grow: %w", d.SizeMiB, size>>20, errdefs.ErrInvalid))
			}
		case d.Import != nil:
			src, err := imports.FromAPI(d.Name, d.Import, func(p string) (string, error) {
				hf, err := s.cfg.Volumes.CheckSource(ctx, storage.SourceImport, p)
				return hf.Path, err
			})
			if err != nil {
				return errdefs.Field(f+".import.path", err)
			}
			if err := imports.Check(src); err != nil {
				return errdefs.Field(f+".import", err)
			}
		case d.Clone != nil:
			if _, err := s.cfg.Volumes.VolumeInfo(ctx, d.Clone.Volume); err != nil {
				return errdefs.Field(f+".clone.volume", err)
			}
		case d.Volume != "":
			vol, err := s.cfg.Volumes.VolumeInfo(ctx, d.Volume)
			if err != nil {
				return errdefs.Field(f+".volume", err)
			}
			if d.Shareable && vol.Format != "raw" {
				return errdefs.Field(f+".shareable", fmt.Errorf("volume %s is %s: only raw volumes can be shared: %w", d.Volume, vol.Format, errdefs.ErrInvalid))
			}
			// A guest writing a volume others build on would change their
			// disks (and a brought-in image goes with its last overlay).
			if deps, err := s.cfg.Volumes.Dependents(ctx, d.Volume); err != nil {
				return errdefs.Field(f+".volume", err)
			} else if len(deps) > 0 {
				return &v1.Error{Code: v1.CodeConflict, Field: f + ".volume",
					Message: fmt.Sprintf("%s.volume: %d volumes are built on %s (%s): clone it instead", f, len(deps), d.Volume, strings.Join(deps[:min(len(deps), 3)], ", "))}
			}
			if vms == nil {
				if vms, err = s.inv.VMList(ctx); err != nil {
					return err
				}
			}
			for _, o := range vms {
				for _, od := range o.Spec.Disks {
					if od.Volume == d.Volume && o.Spec.Name != spec.Name && !(od.Shareable && d.Shareable) {
						return &v1.Error{Code: v1.CodeConflict, Field: f + ".volume",
							Message: fmt.Sprintf("%s.volume: %s is attached to vm %q; both attachments must be shareable", f, d.Volume, o.Spec.Name)}
					}
				}
			}
		}
	}
	return nil
}

// checkPorts refuses host ports another VM on the same host forwards.
// couldPlace checks that some live host (pin, when given) could take the
// VM: memory as its agent last reported, host ports its user-mode NICs
// forward free there.
func (s *Server) couldPlace(ctx context.Context, hosts []v1.Host, spec v1.VMSpec, pin string) error {
	if pin != "" {
		var only []v1.Host
		for _, h := range hosts {
			if h.Name == pin {
				only = append(only, h)
			}
		}
		hosts = only
	}
	var portErr error
	var free []v1.Host
	for _, h := range hosts {
		if !h.Alive {
			continue
		}
		probe := spec
		probe.Host = h.Name
		if err := s.checkPorts(ctx, probe); err != nil {
			if portErr == nil {
				portErr = err
			}
			continue
		}
		free = append(free, h)
	}
	if len(free) == 0 && portErr != nil {
		return portErr
	}
	// The hosts' own counts of what they run stand in for the bookings.
	pol, err := s.inv.Admission(ctx)
	if err != nil {
		return err
	}
	snap := scheduler.Snapshot{Policy: pol}
	for _, h := range free {
		snap.Hosts = append(snap.Hosts, scheduler.Host{Name: h.Name, CPUs: h.CPUs, MemoryMiB: h.MemoryMiB, Alive: true, Maintenance: h.Maintenance})
		snap.Allocs = append(snap.Allocs, scheduler.Alloc{Host: h.Name, VM: "booked-on-" + h.Name, MemoryMiB: h.AllocatedMemoryMiB})
	}
	req := scheduler.FromSpec(spec, nil)
	if pin != "" {
		req.Placement, req.PreferredHosts = scheduler.PlacementManual, []string{pin}
	}
	if len(free) == 0 {
		_, err := scheduler.Place(nil, spec) // says there is no live host
		return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	plan, err := scheduler.Plan(snap, []scheduler.Request{req})
	if err != nil {
		return err
	}
	if err := plan[0].Err; err != nil {
		return errdefs.Placement(err)
	}
	return nil
}

func (s *Server) checkPorts(ctx context.Context, spec v1.VMSpec) error {
	mine := vm.HostPorts(spec)
	if len(mine) == 0 {
		return nil
	}
	specs, _, _, err := s.inv.Specs(ctx)
	if err != nil {
		return err
	}
	for _, o := range specs {
		if o.Host != spec.Host || o.Name == spec.Name {
			continue
		}
		for _, p := range vm.HostPorts(o) {
			for i, n := range spec.NICs {
				for j, f := range n.Forwards {
					if fmt.Sprintf("%s/%d", f.Protocol, f.HostPort) == p {
						field := fmt.Sprintf("nics[%d].forwards[%d].hostPort", i, j)
						return &v1.Error{Code: v1.CodeConflict, Field: field,
							Message: fmt.Sprintf("%s: host port %d is already forwarded to vm %q", field, f.HostPort, o.Name)}
					}
				}
			}
		}
	}
	return nil
}

func (s *Server) newOp(kind, target, host string, args any) v1.Operation {
	now := time.Now().UTC()
	op := v1.Operation{ID: uuid.Must(uuid.NewV7()).String(), Kind: kind, Target: target, Host: host,
		State: v1.OpPending, Created: now, Updated: now, Progress: v1.Progress{Phase: "queued"}}
	if args != nil {
		op.Args = inventory.Marshal(args)
	}
	return op
}

// answerOp returns 202 with the operation, or waits for it with ?wait=.
func (s *Server) answerOp(w http.ResponseWriter, r *http.Request, op v1.Operation, wait time.Duration) {
	w.Header().Set("Location", "/api/v1/operations/"+op.ID)
	if wait > 0 {
		done, err := s.waitOp(r.Context(), op.ID, wait)
		if err == nil {
			op = done
		}
	}
	code := http.StatusAccepted
	if op.Done() {
		code = http.StatusOK
	}
	writeJSON(w, code, op)
}

func (s *Server) waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if n, err2 := strconv.Atoi(v); err2 == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
	}
	if err != nil || d < 0 {
		return 0, &v1.Error{Code: v1.CodeInvalidArgument, Field: "wait", Message: fmt.Sprintf("wait: %q is not a duration (like 30s)", v)}
	}
	return min(d, s.cfg.MaxWait), nil
}

func boolParam(v, field string) (bool, error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, &v1.Error{Code: v1.CodeInvalidArgument, Field: field, Message: fmt.Sprintf("%s: %q is not true or false", field, v)}
	}
	return b, nil
}

// waitOp waits until the operation is done or d passes; it returns the
// last state seen.
func (s *Server) waitOp(ctx context.Context, id string, d time.Duration) (v1.Operation, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	op, rev, err := s.inv.Op(ctx, id)
	if err != nil || op.Done() {
		return op, err
	}
	events := s.cfg.Store.Watch(ctx, inventory.OpKey(id), rev+1)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return op, nil
				}
				if op, rev, err = s.inv.Op(ctx, id); err != nil || op.Done() {
					return op, err
				}
				events = s.cfg.Store.Watch(ctx, inventory.OpKey(id), rev+1)
				continue
			}
			if ev.Type != store.EventPut || ev.KV.Key != inventory.OpKey(id) {
				continue
			}
			var o v1.Operation
			if json.Unmarshal(ev.KV.Value, &o) == nil {
				op = o
				if op.Done() {
					return op, nil
				}
			}
		case <-ctx.Done():
			return op, nil
		}
	}
}

// vmAction handles POST /vms/{name}/{start|stop|reboot|pause|resume}.
func (s *Server) vmAction(w http.ResponseWriter, r *http.Request) {
	name, action := r.PathValue("name"), r.PathValue("action")
	var args any
	power := ""
	var need []string
	switch action {
	case "start":
		power = v1.PowerRunning
		if v, err := s.inv.VM(r.Context(), name); err == nil && v.Spec.Power == v1.PowerStopped {
			v.Spec.Power = power
			if err := master.AdmitHA(r.Context(), s.cfg.Store, s.cfg.Log, v.Spec); err != nil {
				writeErr(w, err)
				return
			}
		}
	case "stop":
		var a v1.StopArgs
		if r.ContentLength != 0 {
			if err := decode(r, &a); err != nil {
				writeErr(w, err)
				return
			}
		}
		if a.TimeoutSeconds < 0 || a.TimeoutSeconds > 3600 {
			writeErr(w, &v1.Error{Code: v1.CodeInvalidArgument, Field: "timeoutSeconds", Message: "timeoutSeconds: must be 0-3600"})
			return
		}
		if f, err := boolParam(r.URL.Query().Get("force"), "force"); err != nil {
			writeErr(w, err)
			return
		} else if f {
			a.Force = true
		}
		args, power = a, v1.PowerStopped
	case "reboot":
		need = []string{v1.StateRunning, v1.StatePaused}
	case "pause":
		power, need = v1.PowerPaused, []string{v1.StateRunning}
	case "resume":
		power, need = v1.PowerRunning, []string{v1.StatePaused, v1.StateSuspended}
	default:
		writeErr(w, &v1.Error{Code: v1.CodeNotFound, Field: "action", Message: fmt.Sprintf("action: no vm action %q (start, stop, reboot, pause, resume)", action)})
		return
	}
	s.submit(w, r, name, action, args, power, need)
}

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	force, err := boolParam(r.URL.Query().Get("force"), "force")
	if err != nil {
		writeErr(w, err)
		return
	}
	need := []string(nil)
	if !force {
		need = []string{v1.StateStopped, v1.StateCrashed, v1.StateError, v1.StateCreating, v1.StateLost}
	}
	s.submit(w, r, r.PathValue("name"), "delete", v1.DeleteArgs{Force: force}, "", need)
}

// submit records an operation on a VM, and the power state it asks for, in
// one transaction conditioned on the spec's revision.
func (s *Server) submit(w http.ResponseWriter, r *http.Request, name, kind string, args any, power string, need []string) {
	var mutate func(*v1.VMSpec)
	if power != "" {
		mutate = func(sp *v1.VMSpec) { sp.Power = power }
	}
	s.submitSpec(w, r, name, kind, args, mutate, need)
}

// submitSpec is submit with any change of the spec (applied to the current
// revision, retried on conflicts).
func (s *Server) submitSpec(w http.ResponseWriter, r *http.Request, name, kind string, args any, mutate func(*v1.VMSpec), need []string) {
	ctx := r.Context()
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return
	}
	wait, err := s.waitParam(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	for attempt := 0; ; attempt++ {
		v, err := s.inv.VM(ctx, name)
		if err != nil {
			writeErr(w, err)
			return
		}
		if err := vm.CheckState(name, actionWord(kind), v.Status.State, need); err != nil {
			writeErr(w, err)
			return
		}
		host := v.Spec.Host
		if vm.DrivenByMaster(kind) {
			host = "" // the master drives it: no agent's task
		}
		op := s.newOp(kind, name, host, args)
		spec := v.Spec
		if mutate != nil {
			mutate(&spec)
		}
		ops := append(inventory.NewOpWrites(op), store.PutOp(inventory.VMKey(name), inventory.Marshal(spec), v.Revision))
		_, err = s.cfg.Store.Txn(ctx, nil, ops...)
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			continue
		}
		if err != nil {
			writeErr(w, err)
			return
		}
		s.cfg.Log.Info("vm operation accepted", "vm", name, "kind", kind, "op", op.ID)
		s.answerOp(w, r, op, wait)
		return
	}
}

// actionWord names an operation kind as the verb a user typed.
func actionWord(kind string) string {
	switch kind {
	case "snapshot-revert", "snapshot-discard":
		return "revert a snapshot"
	case "snapshot-commit":
		return "delete a snapshot"
	}
	return kind
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (s *Server) listOps(w http.ResponseWriter, r *http.Request) {
	ops, _, _, err := s.inv.Ops(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	t := r.URL.Query().Get("target")
	pool := mayReadPool(r.Context())
	refs := map[string]access.VMRef{}
	kept := ops[:0]
	for _, o := range ops {
		if t != "" && o.Target != t {
			continue
		}
		if !pool {
			// A VM-scoped reader sees the operations of the VMs it sees.
			if vm.OpTarget(o.Kind) != vm.TargetVM {
				continue
			}
			ref, ok := refs[o.Target]
			if !ok {
				if ref, err = s.vmRef(r.Context(), o.Target); err != nil {
					writeErr(w, err)
					return
				}
				refs[o.Target] = ref
			}
			if !mayRead(r.Context(), ref) {
				continue
			}
		}
		kept = append(kept, o)
	}
	writeJSON(w, 200, kept)
}

func validOpID(id string) error { return vm.ValidateOpID("id", id) }

func (s *Server) getOp(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := validOpID(id); err != nil {
		writeErr(w, err)
		return
	}
	op, _, err := s.inv.Op(r.Context(), id)
	if err != nil {
		writeErr(w, err)
		return
	}
	wait, err := s.waitParam(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if wait > 0 && !op.Done() {
		if op, err = s.waitOp(r.Context(), id, wait); err != nil {
			writeErr(w, err)
			return
		}
	}
	writeJSON(w, 200, op)
}

// cancelOp cancels an operation that has not started.
func (s *Server) cancelOp(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := validOpID(id); err != nil {
		writeErr(w, err)
		return
	}
	op, rev, err := s.inv.Op(r.Context(), id)
	if err != nil {
		writeErr(w, err)
		return
	}
	if op.State != v1.OpPending {
		writeErr(w, errdefs.Precondition("operation %s is %s: only a pending operation can be cancelled", id, op.State))
		return
	}
	op.State, op.Updated = v1.OpCancelled, time.Now().UTC()
	if _, err := s.inv.PutOp(r.Context(), op, rev); err != nil {
		if errors.Is(err, store.ErrConflict) {
			err = errdefs.Precondition("operation %s started meanwhile: only a pending operation can be cancelled", id)
		}
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, op)
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) {
	hosts, err := s.hosts(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, 200, hosts)
}

func (s *Server) getHost(w http.ResponseWriter, r *http.Request) {
	if err := vm.ValidateName("name", r.PathValue("name")); err != nil {
		writeErr(w, err)
		return
	}
	hosts, err := s.hosts(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	for _, h := range hosts {
		if h.Name == r.PathValue("name") {
			writeJSON(w, 200, h)
			return
		}
	}
	writeErr(w, &v1.Error{Code: v1.CodeNotFound, Field: "name", Message: fmt.Sprintf("host %q not found", r.PathValue("name"))})
}

func (s *Server) consoleLog(w http.ResponseWriter, r *http.Request) {
	name, _, ok := s.vmHere(w, r)
	if !ok {
		return
	}
	f, err := os.Open(s.cfg.Consoles.SerialLogPath(name))
	if errors.Is(err, os.ErrNotExist) {
		w.Header().Set("Content-Type", "text/plain")
		return
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.Copy(w, f)
}

// console upgrades the connection to a raw byte stream to the VM's serial
// console (Upgrade: hangar-console), or to a websocket carrying it
// (Upgrade: websocket, the browser's; wsconsole.go).
func (s *Server) console(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := vm.ValidateName("name", name); err != nil {
		writeErr(w, err)
		return
	}
	ws := isWebsocket(r)
	if !ws && !strings.EqualFold(r.Header.Get("Upgrade"), "hangar-console") {
		writeErr(w, &v1.Error{Code: v1.CodeInvalidArgument, Field: "Upgrade", Message: "Upgrade: the console needs the header Upgrade: hangar-console or Upgrade: websocket"})
		return
	}
	if ws {
		if err := checkWebsocketOrigin(r); err != nil {
			writeErr(w, err)
			return
		}
	}
	host, err := s.vmHost(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if err := s.checkConsoleTicket(r, name); err != nil {
		writeErr(w, err)
		return
	}
	if !s.servedHere(w, r, host) {
		return
	}
	cons, err := s.cfg.Consoles.OpenConsole(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	defer cons.Close()
	if ws {
		serveWebsocketConsole(w, r, cons)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeErr(w, errors.New("console: connection cannot be upgraded"))
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: hangar-console\r\nConnection: Upgrade\r\n\r\n")
	relay(cons, buf, conn)
}
