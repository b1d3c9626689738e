package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "hangar/api/v1"
)

// hostileCase is one hostile request and the answer it must get. The
// request goes over its own connection exactly as written (the path is
// neither cleaned nor escaped).
type hostileCase struct {
	name   string
	method string
	path   string
	// ctype is the Content-Type: "" sends application/json when there is a
	// body; "none" sends no Content-Type at all.
	ctype  string
	body   string
	header map[string]string // more request headers
	// The answer: its status, error code ("" = the code of the status)
	// and the field it names ("" = none).
	status int
	code   string
	field  string
	// msg, when set, must be part of the error message.
	msg string
}

// statusCode is the error code an HTTP status stands for.
var statusCode = map[int]string{
	400: v1.CodeInvalidArgument, 403: v1.CodePermissionDenied, 404: v1.CodeNotFound,
	405: v1.CodeMethodNotAllowed, 409: v1.CodeConflict, 412: v1.CodeFailedPrecondition,
	413: v1.CodeTooLarge, 415: v1.CodeUnsupportedMediaType, 503: v1.CodeUnavailable,
}

// hostileTally counts what a suite's answers were, for the closing note.
type hostileTally struct {
	cases, clean4xx, withField, serverErrors int
}

// runHostile sends every case to s and checks the answer: the status, that
// the body is a JSON error with a code and a message (whatever the status),
// the code and the field; 405 must carry Allow. The server must still
// answer afterwards.
func runHostile(t *testing.T, s *server, cases []hostileCase) hostileTally {
	t.Helper()
	var tally hostileTally
	for _, c := range cases {
		tally.cases++
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			h := http.Header{}
			var body []byte
			if c.body != "" {
				body = []byte(c.body)
			}
			switch {
			case c.ctype == "none":
			case c.ctype != "":
				h.Set("Content-Type", c.ctype)
			case c.body != "":
				h.Set("Content-Type", "application/json")
			}
			for k, v := range c.header {
				h.Set(k, v)
			}
			status, rh, rb, err := s.c.RawRequest(ctx, c.method, c.path, h, body)
			if err != nil {
				t.Fatalf("%s %s: %v", c.method, c.path, err)
			}
			if status >= 500 {
				tally.serverErrors++
			}
			if mt, _, _ := mime.ParseMediaType(rh.Get("Content-Type")); mt != "application/json" {
				t.Errorf("answer %d has Content-Type %q, not JSON: %.300s", status, rh.Get("Content-Type"), rb)
			}
			var er v1.ErrorResponse
			if err := json.Unmarshal(rb, &er); err != nil || er.Error == nil || er.Error.Code == "" || er.Error.Message == "" {
				t.Fatalf("%s %.80s: status %d, body is not a JSON error with a code and a message: %.300s", c.method, c.path, status, rb)
			}
			e := er.Error
			code := c.code
			if code == "" {
				code = statusCode[c.status]
			}
			if status != c.status || e.Code != code || e.Field != c.field {
				t.Fatalf("%s %.80s: got %d %s field %q (%s), want %d %s field %q", c.method, c.path, status, e.Code, e.Field, e.Message, c.status, code, c.field)
			}
			if c.msg != "" && !strings.Contains(e.Message, c.msg) {
				t.Errorf("message %q does not say %q", e.Message, c.msg)
			}
			checkSpec(t, c.method, c.path, status, rh, rb) // error answers are documented ones
			if status == 405 && rh.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
			if status >= 400 && status < 500 {
				tally.clean4xx++
				if e.Field != "" {
					tally.withField++
				}
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.c.Hosts(ctx); err != nil {
		t.Fatalf("the server does not answer after the hostile requests: %v", err)
	}
	t.Logf("hostile suite: %d cases, %d clean 4xx (%d naming a field), %d 5xx", tally.cases, tally.clean4xx, tally.withField, tally.serverErrors)
	return tally
}

// TestHostileAPI: hostile requests to the API's routes, names and bodies
// (storage and host files are in hostile_storage_test.go). One stopped VM
// "target" exists so that requests reach the checks of their arguments;
// nothing else may be created, and the target must be unchanged.
func TestHostileAPI(t *testing.T) {
	s := newServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	op, err := s.c.CreateVM(ctx, v1.VMSpec{Name: "target", MemoryMiB: 64}, false, time.Minute)
	if err == nil {
		_, err = s.c.Wait(ctx, op, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	before, err := s.c.VM(ctx, "target")
	if err != nil {
		t.Fatal(err)
	}

	long := strings.Repeat("a", 300)
	uuid := "0190c1f2-0000-7000-8000-000000000000"
	vmBody := func(extra string) string { return `{"name":"h1","memoryMiB":128` + extra + `}` }
	cases := []hostileCase{
		// From the first bad-input suite: bodies of POST /vms.
		{name: "bad name", method: "POST", path: "/api/v1/vms", body: `{"name":"Bad_Name","memoryMiB":128}`, status: 400, field: "name"},
		{name: "name too long", method: "POST", path: "/api/v1/vms", body: fmt.Sprintf(`{"name":%q,"memoryMiB":128}`, strings.Repeat("a", 64)), status: 400, field: "name"},
		{name: "name 300 chars", method: "POST", path: "/api/v1/vms", body: fmt.Sprintf(`{"name":%q,"memoryMiB":128}`, long), status: 400, field: "name"},
		{name: "path in name", method: "POST", path: "/api/v1/vms", body: `{"name":"../etc","memoryMiB":128}`, status: 400, field: "name"},
		{name: "NUL in name", method: "POST", path: "/api/v1/vms", body: `{"name":"a\u0000b","memoryMiB":128}`, status: 400, field: "name"},
		{name: "no name", method: "POST", path: "/api/v1/vms", body: `{"memoryMiB":128}`, status: 400, field: "name"},
		{name: "memory too small", method: "POST", path: "/api/v1/vms", body: `{"name":"m1","memoryMiB":8}`, status: 400, field: "memoryMiB"},
		{name: "memory above host", method: "POST", path: "/api/v1/vms", body: `{"name":"m2","memoryMiB":100000000}`, status: 400, field: "memoryMiB"},
		{name: "memory wrong type", method: "POST", path: "/api/v1/vms", body: `{"name":"m3","memoryMiB":"lots"}`, status: 400, field: "memoryMiB"},
		{name: "cpus negative", method: "POST", path: "/api/v1/vms", body: vmBody(`,"cpus":-1`), status: 400, field: "cpus"},
		{name: "cpus fraction", method: "POST", path: "/api/v1/vms", body: vmBody(`,"cpus":1.5`), status: 400, field: "cpus"},
		{name: "cpus huge", method: "POST", path: "/api/v1/vms", body: vmBody(`,"cpus":99999999999999999999`), status: 400, field: "cpus"},
		{name: "unknown field", method: "POST", path: "/api/v1/vms", body: vmBody(`,"colour":"red"`), status: 400, field: "colour"},
		{name: "field in another case", method: "POST", path: "/api/v1/vms", body: `{"name":"h1","MemoryMiB":128}`, status: 400, field: "MemoryMiB", msg: `did you mean "memoryMiB"`},
		{name: "unknown nested field", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":[{"sizeMiB":10,"shape":"round"}]`), status: 400, field: "disks[0].shape"},
		{name: "duplicate key", method: "POST", path: "/api/v1/vms", body: `{"name":"h1","memoryMiB":128,"name":"h2"}`, status: 400, field: "name", msg: "duplicate"},
		{name: "duplicate key in another case", method: "POST", path: "/api/v1/vms", body: `{"name":"h1","memoryMiB":128,"MEMORYMIB":64}`, status: 400, field: "MEMORYMIB", msg: "duplicate"},
		{name: "duplicate nested key", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":[{"sizeMiB":10,"sizeMiB":20}]`), status: 400, field: "disks[0].sizeMiB"},
		{name: "malformed json", method: "POST", path: "/api/v1/vms", body: `{"name":`, status: 400, field: "body"},
		{name: "two documents", method: "POST", path: "/api/v1/vms", body: vmBody("") + vmBody(""), status: 400, field: "body"},
		{name: "array body", method: "POST", path: "/api/v1/vms", body: `[1,2]`, status: 400, field: "body"},
		{name: "deep nesting", method: "POST", path: "/api/v1/vms", body: `{"disks":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, status: 400, field: "body"},
		{name: "empty body", method: "POST", path: "/api/v1/vms", ctype: "application/json", status: 400, field: "body"},
		{name: "disks not a list", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":{"name":"x"}`), status: 400, field: "disks"},
		{name: "hostPort a string", method: "POST", path: "/api/v1/vms", body: vmBody(`,"nics":[{"forwards":[{"hostPort":"80","guestPort":80}]}]`), status: 400, field: "nics[0].forwards[0].hostPort"},
		{name: "relative image", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":[{"image":"disk.qcow2"}]`), status: 400, field: "disks[0].image"},
		{name: "NUL in image", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":[{"image":"/tmp/a\u0000b"}]`), status: 400, field: "disks[0].image"},
		{name: "disk name traversal", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":[{"name":"../../x","sizeMiB":16}]`), status: 400, field: "disks[0].name"},
		{name: "disk name 300 chars", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":[{"name":"` + long + `","sizeMiB":16}]`), status: 400, field: "disks[0].name"},
		{name: "disk without size", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":[{}]`), status: 400, field: "disks[0].sizeMiB"},
		{name: "bad bus", method: "POST", path: "/api/v1/vms", body: vmBody(`,"disks":[{"sizeMiB":10,"bus":"floppy"}]`), status: 400, field: "disks[0].bus"},
		{name: "bad machine", method: "POST", path: "/api/v1/vms", body: vmBody(`,"machine":"isapc"`), status: 400, field: "machine"},
		{name: "bad cpu model", method: "POST", path: "/api/v1/vms", body: vmBody(`,"cpuModel":"max,+vmx;rm"`), status: 400, field: "cpuModel"},
		{name: "bad restart policy", method: "POST", path: "/api/v1/vms", body: vmBody(`,"restartPolicy":"sometimes"`), status: 400, field: "restartPolicy"},
		{name: "bad forward port", method: "POST", path: "/api/v1/vms", body: vmBody(`,"nics":[{"mode":"user","forwards":[{"hostPort":70000,"guestPort":80}]}]`), status: 400, field: "nics[0].forwards[0].hostPort"},
		{name: "bad nic mode", method: "POST", path: "/api/v1/vms", body: vmBody(`,"nics":[{"mode":"magic"}]`), status: 400, field: "nics[0].mode"},
		{name: "bad mac", method: "POST", path: "/api/v1/vms", body: vmBody(`,"nics":[{"mode":"user","mac":"zz:zz"}]`), status: 400, field: "nics[0].mac"},
		{name: "multicast mac", method: "POST", path: "/api/v1/vms", body: vmBody(`,"nics":[{"mode":"user"},{"mode":"user","mac":"01:00:5e:00:00:01"}]`), status: 400, field: "nics[1].mac"},
		{name: "broadcast mac", method: "POST", path: "/api/v1/vms", body: vmBody(`,"nics":[{"mac":"ff:ff:ff:ff:ff:ff"}]`), status: 400, field: "nics[0].mac"},
		{name: "bridge name injection", method: "POST", path: "/api/v1/vms", body: vmBody(`,"nics":[{"mode":"bridge","bridge":"br0,script=/x"}]`), status: 400, field: "nics[0].bridge"},
		{name: "bridge name traversal", method: "POST", path: "/api/v1/vms", body: vmBody(`,"nics":[{"mode":"bridge","bridge":".."}]`), status: 400, field: "nics[0].bridge"},
		{name: "host set by user", method: "POST", path: "/api/v1/vms", body: vmBody(`,"host":"elsewhere"`), status: 400, field: "host"},
		{name: "uuid set by user", method: "POST", path: "/api/v1/vms", body: vmBody(`,"uuid":"x"`), status: 400, field: "uuid"},
		{name: "user-data hash set by user", method: "POST", path: "/api/v1/vms", body: vmBody(`,"cloudInit":{"userDataSHA256":"00"}`), status: 400, field: "cloudInit.userDataSHA256"},
		{name: "cloud-init too big", method: "POST", path: "/api/v1/vms", body: vmBody(`,"cloudInit":{"userData":"` + strings.Repeat("x", 70<<10) + `"}`), status: 400, field: "cloudInit"},
		{name: "bad wait", method: "POST", path: "/api/v1/vms?wait=soon", body: vmBody(`,"disks":[{"sizeMiB":16}]`), status: 400, field: "wait"},
		{name: "negative wait", method: "POST", path: "/api/v1/vms?wait=-5s", body: vmBody(`,"disks":[{"sizeMiB":16}]`), status: 400, field: "wait"},
		{name: "bad start", method: "POST", path: "/api/v1/vms?start=yes", body: vmBody(`,"disks":[{"sizeMiB":16}]`), status: 400, field: "start"},

		// Oversize bodies: 413 before the body is read (Content-Length) or
		// while it is (chunked).
		{name: "oversize create", method: "POST", path: "/api/v1/vms", body: vmBody(`,"x":"` + strings.Repeat("x", 2<<20) + `"`), status: 413, field: "body"},
		{name: "oversize create chunked", method: "POST", path: "/api/v1/vms", header: map[string]string{"Transfer-Encoding": "chunked"}, body: vmBody(`,"x":"` + strings.Repeat("x", 2<<20) + `"`), status: 413, field: "body"},
		{name: "oversize action", method: "POST", path: "/api/v1/vms/target/stop", body: `{"force":true,"x":"` + strings.Repeat("x", 100<<10) + `"}`, status: 413, field: "body"},
		{name: "oversize patch", method: "PATCH", path: "/api/v1/vms/target", body: `{"cpus":2,"x":"` + strings.Repeat("x", 100<<10) + `"}`, status: 413, field: "body"},

		// Content types: a body must say it is JSON (a form or text/plain
		// post from another site is not).
		{name: "text/plain create", method: "POST", path: "/api/v1/vms", ctype: "text/plain", body: vmBody(""), status: 415, field: "Content-Type"},
		{name: "form create", method: "POST", path: "/api/v1/vms", ctype: "application/x-www-form-urlencoded", body: "name=h1&memoryMiB=128", status: 415, field: "Content-Type"},
		{name: "multipart create", method: "POST", path: "/api/v1/vms", ctype: "multipart/form-data; boundary=x", body: "--x--", status: 415, field: "Content-Type"},
		{name: "no content type", method: "POST", path: "/api/v1/vms", ctype: "none", body: vmBody(""), status: 415, field: "Content-Type"},
		{name: "bad content type", method: "POST", path: "/api/v1/vms", ctype: ";;;", body: vmBody(""), status: 415, field: "Content-Type"},
		{name: "json with charset is json", method: "POST", path: "/api/v1/vms", ctype: "application/json; charset=utf-8", body: `{"name":"Bad"}`, status: 400, field: "name"},
		{name: "form with empty body", method: "POST", path: "/api/v1/vms/target/start", ctype: "application/x-www-form-urlencoded", status: 415, field: "Content-Type"},
		{name: "text/plain stop", method: "POST", path: "/api/v1/vms/target/stop", ctype: "text/plain", body: `{"force":true}`, status: 415, field: "Content-Type"},
		{name: "text/plain delete", method: "DELETE", path: "/api/v1/vms/target?force=true", ctype: "text/plain", body: `x`, status: 415, field: "Content-Type"},
		{name: "text/plain patch", method: "PATCH", path: "/api/v1/vms/target", ctype: "text/plain", body: `{"cpus":2}`, status: 415, field: "Content-Type"},
		{name: "json upload", method: "PUT", path: "/api/v1/pools/local-testhost/volumes/images%2Fx.raw/data", ctype: "application/json", body: `{}`, status: 415, field: "Content-Type"},
		{name: "cross-site stop", method: "POST", path: "/api/v1/vms/target/stop", header: map[string]string{"Sec-Fetch-Site": "cross-site"}, status: 403},
		{name: "foreign origin delete", method: "DELETE", path: "/api/v1/vms/target?force=true", header: map[string]string{"Origin": "http://evil.example"}, status: 403},

		// Unclean paths are refused, not redirected.
		{name: "double slash", method: "GET", path: "//api/v1/vms", status: 400, field: "path"},
		{name: "double slash inside", method: "GET", path: "/api/v1//vms", status: 400, field: "path"},
		{name: "dot dot", method: "GET", path: "/api/v1/../v1/vms", status: 400, field: "path"},
		{name: "dot", method: "GET", path: "/api/v1/./vms", status: 400, field: "path"},
		{name: "dot dot post", method: "POST", path: "/api/v1/vms/x/../target/start", status: 400, field: "path"},
		{name: "trailing slash", method: "GET", path: "/api/v1/vms/", status: 404},
		{name: "no route", method: "GET", path: "/api/v1/nothing", status: 404},
		{name: "no api", method: "GET", path: "/api", status: 404},
		// "/" is the web UI's page (TestWebUIServedAnonymously); beside it, nothing.
		{name: "beside the ui", method: "GET", path: "/index.php", status: 404},
		{name: "post the ui", method: "POST", path: "/", body: `{}`, status: 405},

		// Wrong methods: 405 with Allow.
		{name: "put vms", method: "PUT", path: "/api/v1/vms", body: `{}`, status: 405},
		{name: "delete hosts", method: "DELETE", path: "/api/v1/hosts", status: 405},
		{name: "get action", method: "GET", path: "/api/v1/vms/target/start", status: 405},
		{name: "post operation", method: "POST", path: "/api/v1/operations/" + uuid, body: `{}`, status: 405},
		{name: "patch operations", method: "PATCH", path: "/api/v1/operations", body: `{}`, status: 405},
		{name: "options", method: "OPTIONS", path: "/api/v1/vms", status: 405},
		{name: "made-up method", method: "BREW", path: "/api/v1/vms", status: 405},
		{name: "put template", method: "PUT", path: "/api/v1/templates/t1", body: `{}`, status: 405},

		// Names in URLs: traversal, NUL, length.
		{name: "vm name traversal", method: "GET", path: "/api/v1/vms/..%2F..%2Fetc", status: 400, field: "name"},
		{name: "vm name dot dot", method: "GET", path: "/api/v1/vms/%2e%2e", status: 400, field: "name"},
		{name: "vm name NUL", method: "GET", path: "/api/v1/vms/a%00b", status: 400, field: "name"},
		{name: "vm name 300 chars", method: "GET", path: "/api/v1/vms/" + long, status: 400, field: "name"},
		{name: "vm name upper case", method: "GET", path: "/api/v1/vms/TARGET", status: 400, field: "name"},
		{name: "delete traversal", method: "DELETE", path: "/api/v1/vms/..%2Ftarget", status: 400, field: "name"},
		{name: "patch traversal", method: "PATCH", path: "/api/v1/vms/..%2Ftarget", body: `{"cpus":2}`, status: 400, field: "name"},
		{name: "action traversal", method: "POST", path: "/api/v1/vms/%2e%2e%2ftarget/start", status: 400, field: "name"},
		{name: "console traversal", method: "GET", path: "/api/v1/vms/..%2Ftarget/console", header: map[string]string{"Upgrade": "hangar-console", "Connection": "Upgrade"}, status: 400, field: "name"},
		{name: "console log traversal", method: "GET", path: "/api/v1/vms/..%2F..%2Fetc%2Fshadow/console/log", status: 400, field: "name"},
		{name: "console log 300 chars", method: "GET", path: "/api/v1/vms/" + long + "/console/log", status: 400, field: "name"},
		{name: "console without upgrade", method: "GET", path: "/api/v1/vms/target/console", status: 400, field: "Upgrade"},
		{name: "snapshots traversal", method: "GET", path: "/api/v1/vms/..%2Fx/snapshots", status: 400, field: "name"},
		{name: "snapshot name traversal", method: "DELETE", path: "/api/v1/vms/target/snapshots/..%2F..%2Fx", status: 400, field: "snap"},
		{name: "snapshot revert traversal", method: "POST", path: "/api/v1/vms/target/snapshots/%2e%2e/revert", status: 400, field: "snap"},
		{name: "snapshot 300 chars", method: "DELETE", path: "/api/v1/vms/target/snapshots/" + long, status: 400, field: "snap"},
		{name: "template traversal", method: "GET", path: "/api/v1/templates/..%2Fvms%2Ftarget", status: 400, field: "name"},
		{name: "deploy traversal", method: "POST", path: "/api/v1/templates/..%2Ft/deploy", body: `{"name":"d1"}`, status: 400, field: "name"},
		{name: "host traversal", method: "GET", path: "/api/v1/hosts/..%2Ftesthost", status: 400, field: "name"},
		{name: "host 300 chars", method: "GET", path: "/api/v1/hosts/" + long, status: 400, field: "name"},
		{name: "pool 300 chars", method: "GET", path: "/api/v1/pools/" + long + "/volumes", status: 400, field: "pool"},
		{name: "op id traversal", method: "GET", path: "/api/v1/operations/..%2F..%2Fvms%2Ftarget", status: 400, field: "id"},
		{name: "op id 300 chars", method: "GET", path: "/api/v1/operations/" + long, status: 400, field: "id"},
		{name: "cancel op traversal", method: "DELETE", path: "/api/v1/operations/..%2Fx", status: 400, field: "id"},
		{name: "bad op id", method: "GET", path: "/api/v1/operations/not-an-id", status: 400, field: "id"},

		// Names in bodies of actions.
		{name: "clone name traversal", method: "POST", path: "/api/v1/vms/target/clone", body: `{"name":"../x"}`, status: 400, field: "name"},
		{name: "clone name 300 chars", method: "POST", path: "/api/v1/vms/target/clone", body: `{"name":"` + long + `"}`, status: 400, field: "name"},
		{name: "template name traversal", method: "POST", path: "/api/v1/vms/target/template", body: `{"template":"../../t"}`, status: 400, field: "template"},
		{name: "snapshot body traversal", method: "POST", path: "/api/v1/vms/target/snapshots", body: `{"name":"../s"}`, status: 400, field: "name"},
		{name: "deploy body traversal", method: "POST", path: "/api/v1/templates/t1/deploy", body: `{"name":"../d"}`, status: 400, field: "name"},
		{name: "media disk unknown", method: "POST", path: "/api/v1/vms/target/media", body: `{"disk":"../cidata"}`, status: 400, field: "disk"},
		{name: "import cpus negative", method: "POST", path: "/api/v1/imports", body: `{"path":"/nonexistent.ova","cpus":-1}`, status: 400, field: "cpus"},
		{name: "import memory negative", method: "POST", path: "/api/v1/imports", body: `{"path":"/nonexistent.ova","memoryMiB":-1}`, status: 400, field: "memoryMiB"},

		// Actions and their arguments.
		{name: "unknown vm", method: "GET", path: "/api/v1/vms/ghost", status: 404, msg: `vm "ghost" not found`},
		{name: "unknown op", method: "GET", path: "/api/v1/operations/" + uuid, status: 404, msg: `operation "` + uuid + `" not found`},
		{name: "unknown pool", method: "GET", path: "/api/v1/pools/nope/volumes", status: 404, msg: `storage pool "nope" not found`},
		{name: "unknown template", method: "GET", path: "/api/v1/templates/nope", status: 404, field: "name", msg: `template "nope" not found`},
		{name: "unknown action", method: "POST", path: "/api/v1/vms/ghost/explode", status: 404, field: "action"},
		{name: "stop body unknown field", method: "POST", path: "/api/v1/vms/ghost/stop", body: `{"gently":true}`, status: 400, field: "gently"},
		{name: "stop timeout negative", method: "POST", path: "/api/v1/vms/target/stop", body: `{"timeoutSeconds":-1}`, status: 400, field: "timeoutSeconds"},
		{name: "delete with a body", method: "DELETE", path: "/api/v1/vms/target", body: `{"force":true}`, status: 400, field: "body", msg: "?force=true"},
		{name: "start with a body", method: "POST", path: "/api/v1/vms/target/start", body: `{"force":true}`, status: 400, field: "body"},
		{name: "suspend with a body", method: "POST", path: "/api/v1/vms/target/suspend", body: `{"x":1}`, status: 400, field: "body"},
		{name: "cancel with a body", method: "DELETE", path: "/api/v1/operations/" + uuid, body: `[1]`, status: 400, field: "body"},
		{name: "start with {} is fine", method: "POST", path: "/api/v1/vms/ghost/start", body: `{}`, status: 404},
		{name: "bad force", method: "DELETE", path: "/api/v1/vms/target?force=maybe", status: 400, field: "force"},
		{name: "pause a stopped vm", method: "POST", path: "/api/v1/vms/target/pause", status: 412, msg: `vm "target" is stopped: start it first`},
		{name: "resume a stopped vm", method: "POST", path: "/api/v1/vms/target/resume", status: 412, msg: `vm "target" is stopped`},
		{name: "patch unknown field", method: "PATCH", path: "/api/v1/vms/target", body: `{"name":"other"}`, status: 400, field: "name"},
		{name: "patch cpus negative", method: "PATCH", path: "/api/v1/vms/target", body: `{"cpus":-1}`, status: 400, field: "cpus"},
		{name: "patch duplicate key", method: "PATCH", path: "/api/v1/vms/target", body: `{"cpus":2,"cpus":200}`, status: 400, field: "cpus"},
		{name: "patch wrong type", method: "PATCH", path: "/api/v1/vms/target", body: `{"memoryMiB":[1]}`, status: 400, field: "memoryMiB"},
		{name: "patch bad policy", method: "PATCH", path: "/api/v1/vms/target", body: `{"restartPolicy":"; reboot"}`, status: 400, field: "restartPolicy"},
		{name: "patch bad If-Match", method: "PATCH", path: "/api/v1/vms/target", header: map[string]string{"If-Match": "yesterday"}, body: `{"cpus":2}`, status: 400, field: "If-Match"},
		{name: "patch stale If-Match", method: "PATCH", path: "/api/v1/vms/target", header: map[string]string{"If-Match": "1"}, body: `{"cpus":2}`, status: 412, field: "If-Match"},
		{name: "volume resize stray field", method: "POST", path: "/api/v1/pools/local-testhost/volumes/images%2Fx.qcow2/resize", body: `{"sizeMiB":64,"disk":"disk0"}`, status: 400, field: "disk"},
	}
	runHostile(t, s, cases)

	vms, err := s.c.VMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].Spec.Name != "target" {
		t.Fatalf("hostile requests left vms: %+v", vms)
	}
	if vms[0].Revision != before.Revision || vms[0].Spec.CPUs != before.Spec.CPUs {
		t.Fatalf("hostile requests changed the target: %+v, was %+v", vms[0].Spec, before.Spec)
	}
}
