package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/hostapi"
	"hangar/internal/inventory"
	"hangar/internal/qemu"
	"hangar/internal/storage"
	"hangar/internal/store"
	"hangar/internal/vm"
)

// Host-local work goes to the host (docs/architecture.md "Host-local
// work"): a VM's console and serial log, and a host's own volumes, are
// served by the host that has them. The API on another host forwards the
// request there (internal/hostapi); the receiving host serves a request
// marked as forwarded itself, and only from a pool host's certificate
// (checkForwarded, at the edge).

// checkForwarded refuses a request marked as forwarded (hostapi.Header)
// unless it came from a host of the pool with its host certificate.
func (s *Server) checkForwarded(r *http.Request) error {
	if len(r.Header.Values(hostapi.Header)) == 0 {
		return nil
	}
	if s.cfg.Forward == nil {
		return hostapi.VerifyWithout(r)
	}
	_, err := s.cfg.Forward.Verify(r)
	return err
}

// servedHere reports whether this host serves a host-local request about
// host. When it does not, it has forwarded the request to host and written
// that host's answer. A request forwarded to this host (its marker checked
// at the edge) is always served here: never forwarded twice.
func (s *Server) servedHere(w http.ResponseWriter, r *http.Request, host string) bool {
	if s.cfg.Forward == nil || host == "" || host == s.cfg.Forward.Self() || len(r.Header.Values(hostapi.Header)) > 0 {
		return true
	}
	// The host asked sets the security headers too: keep one of each.
	s.cfg.Forward.Forward(oneOfEach{w}, r, host)
	return false
}

// oneOfEach keeps the first value of each security header when a
// forwarded answer adds its own.
type oneOfEach struct{ http.ResponseWriter }

func (o oneOfEach) dedup() {
	h := o.Header()
	for _, k := range securityHeaderNames {
		if v := h.Values(k); len(v) > 1 {
			h.Set(k, v[0])
		}
	}
}

func (o oneOfEach) WriteHeader(code int) { o.dedup(); o.ResponseWriter.WriteHeader(code) }
func (o oneOfEach) Write(b []byte) (int, error) {
	o.dedup()
	return o.ResponseWriter.Write(b)
}

// Unwrap lets the proxy reach the connection (flushes, upgrades).
func (o oneOfEach) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// vmHost is the host that has a VM's files and process: the host its
// owner record names (the pool master's, while the VM runs) or else the
// host its spec is placed on.
func (s *Server) vmHost(ctx context.Context, name string) (string, error) {
	spec, _, err := s.inv.Spec(ctx, name)
	if err != nil {
		return "", err
	}
	var o inventory.Owner
	_, err = store.GetJSON(ctx, s.cfg.Store, inventory.OwnerKey(name), &o)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return spec.Host, nil
	case err != nil:
		return "", fmt.Errorf("load owner of vm %q: %w", name, err)
	case vm.ValidateName("host", o.Host) != nil:
		return "", fmt.Errorf("owner of vm %q names host %q: %w", name, o.Host, inventory.ErrInvalidRecord)
	}
	return o.Host, nil
}

// forwardToHostParam forwards a request about a pool's volumes to the host
// that has them (poolHost) and reports whether the request was answered
// (forwarded, or a bad host).
func (s *Server) forwardToHostParam(w http.ResponseWriter, r *http.Request) bool {
	host, err := s.poolHost(r.Context(), r, r.PathValue("pool"))
	if err != nil {
		writeErr(w, err)
		return true
	}
	return !s.servedHere(w, r, host)
}

// poolHost is the host that serves a request about pool's volumes ("":
// this host): the host whose own pool it is (local-<host>), else the ?host=
// of the request (a shared or recorded pool is served by any host that
// mounts it), a host of the pool.
func (s *Server) poolHost(ctx context.Context, r *http.Request, pool string) (string, error) {
	return s.hostOf(ctx, pool, r.URL.Query().Get("host"))
}

// hostOf checks the host a request names (query, "" for none) against the
// pool it is about (pool, "" for none) and returns it: the owner of a
// host's own pool, or the host asked for.
func (s *Server) hostOf(ctx context.Context, pool, query string) (string, error) {
	h, field := query, "host"
	if owner, ok := storage.LocalPoolHost(pool); ok {
		if query != "" && query != owner {
			return "", invalidArg("host", "pool %s is host %s's own, not %s's", pool, owner, query)
		}
		h, field = owner, "pool"
	}
	if h == "" {
		return "", nil
	}
	if err := vm.ValidateName(field, h); err != nil {
		return "", err
	}
	if _, err := store.GetJSON(ctx, s.cfg.Store, inventory.HostInfoKey(h), &v1.Host{}); err != nil {
		return "", errdefs.Field(field, inventory.NotFound(err, "host", h))
	}
	return h, nil
}

// forwardToVMHost forwards a request about VM name to the host that has it
// (vmHost) and reports whether it did (the answer is written). A request
// with a bad name is left to its handler.
func (s *Server) forwardToVMHost(w http.ResponseWriter, r *http.Request, name string) bool {
	if s.cfg.Forward == nil || vm.ValidateName("name", name) != nil {
		return false
	}
	host, err := s.vmHost(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return true
	}
	return !s.servedHere(w, r, host)
}

// knownHost is the host a new VM will run on when a create already says:
// pinned (host), or placed manually on one host; "" when the master picks.
func knownHost(spec v1.VMSpec, host string) string {
	if host == "" && spec.Placement == v1.PlacementManual && len(spec.PreferredHosts) == 1 {
		return spec.PreferredHosts[0]
	}
	return host
}

// checkSourcesOn checks a new VM's disk sources (checkSources) on host,
// the host the VM will run on: here, or through host's API
// (POST /api/v1/hosts/{host}/check-sources), whose error, field and code
// included, is returned as it is.
func (s *Server) checkSourcesOn(ctx context.Context, host string, spec v1.VMSpec) error {
	if s.cfg.Forward == nil || host == "" || host == s.cfg.Forward.Self() {
		return s.checkSources(ctx, spec)
	}
	spec.CloudInit = nil // the seed plays no part in the check: it stays on this host
	resp, err := s.cfg.Forward.Do(ctx, host, "POST", "/api/v1/hosts/"+host+"/check-sources", bytes.NewReader(inventory.Marshal(spec)))
	if err != nil {
		return fmt.Errorf("check the disks' sources on host %s: %w", host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusNoContent {
		return nil
	}
	var er v1.ErrorResponse
	if json.Unmarshal(b, &er) == nil && er.Error != nil && er.Error.Code != "" {
		return er.Error
	}
	return fmt.Errorf("check the disks' sources on host %s: %s: %w", host, resp.Status, errdefs.ErrUnavailable)
}

// checkSourcesHere answers POST /api/v1/hosts/{name}/check-sources: would
// the disks of this VM spec be accepted on host name (204), or which field
// is refused. Asked of another host, the request goes to host name.
func (s *Server) checkSourcesHere(w http.ResponseWriter, r *http.Request) {
	host := r.PathValue("name")
	if err := vm.ValidateName("name", host); err != nil {
		writeErr(w, err)
		return
	}
	if _, err := store.GetJSON(r.Context(), s.cfg.Store, inventory.HostInfoKey(host), &v1.Host{}); err != nil {
		writeErr(w, inventory.NotFound(err, "host", host))
		return
	}
	if !s.servedHere(w, r, host) {
		return
	}
	var spec v1.VMSpec
	if err := decode(r, &spec); err != nil {
		writeErr(w, err)
		return
	}
	if spec.CPUModel == "" {
		spec.CPUModel = qemu.TCGCPUModel // the model plays no part in the check
	}
	vm.Defaults(&spec, "tcg")
	if err := vm.Validate(spec, 0); err != nil {
		writeErr(w, err)
		return
	}
	if err := s.checkSources(r.Context(), spec); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
