package errdefs

import (
	"fmt"
	"testing"

	v1 "hangar/api/v1"
)

func TestUnauthenticated(t *testing.T) {
	err := fmt.Errorf("bearer token not accepted: %w", ErrUnauthenticated)
	e := ToAPI(err)
	if e.Code != v1.CodeUnauthenticated || HTTPStatus(e.Code) != 401 {
		t.Fatalf("ToAPI = %+v, status %d; want unauthenticated, 401", e, HTTPStatus(e.Code))
	}
}
