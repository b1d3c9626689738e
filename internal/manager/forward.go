package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	v1 "hangar/api/v1"
	"hangar/internal/errdefs"
	"hangar/internal/hostapi"
	"hangar/internal/inventory"
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
	s.cfg.Forward.Forward(w, r, host)
	return false
}

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

// hostParam is the ?host= of a request about a host's own storage ("":
// this host), a host of the pool.
func (s *Server) hostParam(ctx context.Context, r *http.Request) (string, error) {
	h := r.URL.Query().Get("host")
	if h == "" {
		return "", nil
	}
	if err := vm.ValidateName("host", h); err != nil {
		return "", err
	}
	if _, err := store.GetJSON(ctx, s.cfg.Store, inventory.HostInfoKey(h), &v1.Host{}); err != nil {
		return "", errdefs.Field("host", inventory.NotFound(err, "host", h))
	}
	return h, nil
}
