package daemon

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	v1 "hangar/api/v1"
	"hangar/internal/join"
)

type listCluster struct{ join.Cluster }

func (listCluster) Members(context.Context) ([]join.Member, error) {
	return []join.Member{{Name: "h2", ClientURLs: []string{"https://10.0.0.2:2379"}},
		{Name: "h5", ClientURLs: []string{"https://10.0.0.5:2379"}},
		{Name: "h6", ClientURLs: []string{"https://10.0.0.6:2379"}, Learner: true}}, nil
}

// TestRefreshEndpoints: a client host's pool.json follows the voting
// members (not learners), so a restart reaches members that joined after it.
func TestRefreshEndpoints(t *testing.T) {
	dir := t.TempDir()
	st := &join.State{Role: v1.RoleClient, Endpoints: []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}}
	if err := join.WriteState(dir, *st); err != nil {
		t.Fatal(err)
	}
	refreshEndpoints(t.Context(), Config{DataDir: dir, Log: slog.New(slog.DiscardHandler)}, st, listCluster{})
	got, err := join.LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"https://10.0.0.2:2379", "https://10.0.0.5:2379"}; !slices.Equal(got.Endpoints, want) {
		t.Fatalf("endpoints %v, want %v", got.Endpoints, want)
	}
}
