package vm

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	v1 "hangar/api/v1"
)

func TestValidateOp(t *testing.T) {
	const id = "0193abcd-ef01-7000-8000-00000000000a"
	cases := []struct {
		name  string
		op    v1.Operation
		field string // "" = valid
	}{
		{"create", v1.Operation{ID: id, Kind: "create", Target: "web1", Args: json.RawMessage(`{"start":true}`)}, ""},
		{"start without args", v1.Operation{ID: id, Kind: "start", Target: "web1"}, ""},
		{"volume copy", v1.Operation{ID: id, Kind: "volume-copy", Target: "default/images/a.qcow2",
			Args: json.RawMessage(`{"pool":"default","source":"images/a.qcow2","name":"images/b.qcow2"}`)}, ""},
		{"upper-case id", v1.Operation{ID: strings.ToUpper(id), Kind: "start", Target: "web1"}, "id"},
		{"id with a slash", v1.Operation{ID: "../x", Kind: "start", Target: "web1"}, "id"},
		{"unknown kind", v1.Operation{ID: id, Kind: "rm", Target: "web1"}, "kind"},
		{"target traversal", v1.Operation{ID: id, Kind: "delete", Target: "../../victimdir"}, "target"},
		{"target absolute", v1.Operation{ID: id, Kind: "delete", Target: "/abs"}, "target"},
		{"target empty", v1.Operation{ID: id, Kind: "delete", Target: ""}, "target"},
		{"volume target on a vm kind", v1.Operation{ID: id, Kind: "delete", Target: "default/x.qcow2"}, "target"},
		{"vm target on a volume kind", v1.Operation{ID: id, Kind: "volume-flatten", Target: "web1"}, "target"},
		{"volume target escaping", v1.Operation{ID: id, Kind: "volume-flatten", Target: "default/../x",
			Args: json.RawMessage(`{"pool":"default","source":"../x"}`)}, "target"},
		{"volume args not the target", v1.Operation{ID: id, Kind: "volume-flatten", Target: "default/a.qcow2",
			Args: json.RawMessage(`{"pool":"default","source":"b.qcow2"}`)}, "args.source"},
		{"copy destination escaping", v1.Operation{ID: id, Kind: "volume-copy", Target: "default/a.qcow2",
			Args: json.RawMessage(`{"pool":"default","source":"a.qcow2","name":"../b.qcow2"}`)}, "args.name"},
		{"unknown arg", v1.Operation{ID: id, Kind: "stop", Target: "web1", Args: json.RawMessage(`{"force":true,"rm":"/"}`)}, "args"},
		{"trailing data", v1.Operation{ID: id, Kind: "stop", Target: "web1", Args: json.RawMessage(`{} {}`)}, "args"},
		{"args on a kind without", v1.Operation{ID: id, Kind: "reboot", Target: "web1", Args: json.RawMessage(`{"x":1}`)}, "args"},
		{"template name", v1.Operation{ID: id, Kind: "template", Target: "web1", Args: json.RawMessage(`{"template":"../vms"}`)}, "args.template"},
		{"clone name", v1.Operation{ID: id, Kind: "clone", Target: "web1", Args: json.RawMessage(`{"name":"a/b"}`)}, "args.name"},
		{"snapshot name", v1.Operation{ID: id, Kind: "snapshot-commit", Target: "web1", Args: json.RawMessage(`{"name":".."}`)}, "args.name"},
		{"media image relative", v1.Operation{ID: id, Kind: "media", Target: "web1", Args: json.RawMessage(`{"disk":"cd","image":"x.iso"}`)}, "args.image"},
		{"resize disk name", v1.Operation{ID: id, Kind: "resize", Target: "web1", Args: json.RawMessage(`{"disk":"../d","sizeMiB":1}`)}, "args.disk"},
		{"stop timeout", v1.Operation{ID: id, Kind: "stop", Target: "web1", Args: json.RawMessage(`{"timeoutSeconds":-1}`)}, "args.timeoutSeconds"},
		{"limits re-apply", v1.Operation{ID: id, Kind: "limits", Target: "web1"}, ""},
		{"limits of a live change", v1.Operation{ID: id, Kind: "limits", Target: "web1",
			Args: json.RawMessage(`{"previous":{"disks":{"d0":{"iops":100}}},"next":{"resources":{"cpuShares":512}}}`)}, ""},
		{"limits disk name", v1.Operation{ID: id, Kind: "limits", Target: "web1",
			Args: json.RawMessage(`{"previous":{"disks":{"../d":{"iops":100}}},"next":{}}`)}, "args.previous.disks"},
		{"limits nics", v1.Operation{ID: id, Kind: "limits", Target: "web1",
			Args: json.RawMessage(`{"previous":{},"next":{"nics":[null,null,null,null,null,null,null,null,null]}}`)}, "args.next.nics"},
	}
	for _, c := range cases {
		err := ValidateOp(c.op)
		var fe *FieldError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.field != "" && (!errors.As(err, &fe) || fe.Field != c.field):
			t.Errorf("%s: got %v, want an error on field %q", c.name, err, c.field)
		}
	}
}
