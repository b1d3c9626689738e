package main

import (
	"reflect"
	"testing"
)

func TestParseNetworks(t *testing.T) {
	got, err := parseNetworks([]string{"VM Network=br0", "a=b=user", "Storage=br1"})
	want := map[string]string{"VM Network": "br0", "a=b": "user", "Storage": "br1"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("parseNetworks = %v, %v; want %v", got, err, want)
	}
	if got, err := parseNetworks(nil); err != nil || got != nil {
		t.Fatalf("no flags: %v, %v", got, err)
	}
	for _, bad := range [][]string{{"VM Network"}, {"=br0"}, {"VM Network="}, {"a=br0", "a=br1"}} {
		if _, err := parseNetworks(bad); err == nil {
			t.Errorf("parseNetworks(%q) accepted", bad)
		}
	}
}
