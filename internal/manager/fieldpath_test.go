package manager

import (
	"reflect"
	"testing"

	v1 "hangar/api/v1"
)

func TestUnknownFieldPath(t *testing.T) {
	ty := reflect.TypeOf(&v1.VMSpec{})
	cases := map[string]string{
		`{"name":"a","colour":1}`:                                      "colour",
		`{"name":"a","disks":[{"sizeMiB":1},{"shape":"round"}]}`:       "disks[1].shape",
		`{"nics":[{"forwards":[{"hostPort":1,"guestport":2,"x":3}]}]}`: "nics[0].forwards[0].x",
		`{"name":"a","memoryMiB":1}`:                                   "",
	}
	for body, want := range cases {
		if got := unknownFieldPath([]byte(body), ty); got != want {
			t.Errorf("%s: got %q, want %q", body, got, want)
		}
	}
}
