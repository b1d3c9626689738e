package imports

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math/big"
	"path"
	"strconv"
	"strings"
)

// OVF namespaces of the envelope (DSP0243 1.x and 2.x).
const (
	ovfNS1  = "http://schemas.dmtf.org/ovf/envelope/1"
	ovfNS2  = "http://schemas.dmtf.org/ovf/envelope/2"
	maxOVF  = 8 << 20
	maxCPUs = 4096
)

// rasd ResourceType values (CIM_ResourceAllocationSettingData).
const (
	rasdProcessor = 3
	rasdMemory    = 4
	rasdEthernet  = 10
)

// ovfEnvelope is the part of an OVF descriptor an import uses. Element and
// attribute names match in any namespace; the root's namespace is checked.
type ovfEnvelope struct {
	XMLName    xml.Name
	Files      []ovfFile   `xml:"References>File"`
	Disks      []ovfDisk   `xml:"DiskSection>Disk"`
	Systems    []ovfSystem `xml:"VirtualSystem"`
	Collection []struct{}  `xml:"VirtualSystemCollection"`
}

type ovfFile struct {
	ID          string `xml:"id,attr"`
	Href        string `xml:"href,attr"`
	Size        string `xml:"size,attr"`
	Compression string `xml:"compression,attr"`
	ChunkSize   string `xml:"chunkSize,attr"`
}

type ovfDisk struct {
	ID       string `xml:"diskId,attr"`
	FileRef  string `xml:"fileRef,attr"`
	Capacity string `xml:"capacity,attr"`
	Units    string `xml:"capacityAllocationUnits,attr"`
	Format   string `xml:"format,attr"`
}

type ovfSystem struct {
	ID       string `xml:"id,attr"`
	Name     string `xml:"Name"`
	Hardware []struct {
		Items []ovfItem `xml:"Item"`
		Ports []ovfItem `xml:"EthernetPortItem"`
	} `xml:"VirtualHardwareSection"`
}

type ovfItem struct {
	ResourceType string `xml:"ResourceType"`
	Quantity     string `xml:"VirtualQuantity"`
	Units        string `xml:"AllocationUnits"`
}

// parseOVF decodes and checks an OVF descriptor.
func parseOVF(name string, b []byte) (*ovfEnvelope, error) {
	var env ovfEnvelope
	d := xml.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&env); err != nil {
		return nil, malformed("%s: OVF: %v", name, err)
	}
	if env.XMLName.Local != "Envelope" || env.XMLName.Space != ovfNS1 && env.XMLName.Space != ovfNS2 {
		return nil, malformed("%s: not an OVF envelope (root {%s}%s)", name, env.XMLName.Space, env.XMLName.Local)
	}
	if len(env.Collection) > 0 || len(env.Systems) > 1 {
		return nil, malformed("%s: OVF with several virtual systems is not supported", name)
	}
	if len(env.Systems) == 0 {
		return nil, malformed("%s: OVF without a VirtualSystem", name)
	}
	for _, f := range env.Files {
		if err := checkFile(name, f); err != nil {
			return nil, err
		}
	}
	return &env, nil
}

// checkFile refuses references that are not plain files of the package.
func checkFile(name string, f ovfFile) error {
	if err := checkHref(f.Href); err != nil {
		return malformed("%s: OVF file %q: href %q %v", name, f.ID, f.Href, err)
	}
	if f.Compression != "" && f.Compression != "identity" {
		return malformed("%s: OVF file %q: %s compression is not supported", name, f.Href, f.Compression)
	}
	if f.ChunkSize != "" {
		return malformed("%s: OVF file %q: chunked files are not supported", name, f.Href)
	}
	if f.Size != "" {
		if n, err := strconv.ParseInt(f.Size, 10, 64); err != nil || n < 0 {
			return malformed("%s: OVF file %q: bad size %q", name, f.Href, f.Size)
		}
	}
	return nil
}

// checkHref accepts a relative path inside the package: no URL, no leading
// "/", no "..", nothing to clean.
func checkHref(h string) error {
	switch {
	case h == "":
		return fmt.Errorf("is empty")
	case strings.ContainsAny(h, ":\\") || strings.ContainsFunc(h, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("is not a plain file name (URLs are not supported)")
	case strings.HasPrefix(h, "/"):
		return fmt.Errorf("is absolute")
	case path.Clean(h) != h || h == "." || strings.HasPrefix(h, "../") || h == "..":
		return fmt.Errorf("leaves the package or is not clean")
	}
	return nil
}

// file returns the File a disk refers to.
func (env *ovfEnvelope) file(id string) (ovfFile, bool) {
	for _, f := range env.Files {
		if f.ID == id {
			return f, true
		}
	}
	return ovfFile{}, false
}

// plan fills a Plan's name and virtual hardware from the VirtualSystem.
func (env *ovfEnvelope) plan(name, fallback string) (Plan, error) {
	sys := env.Systems[0]
	p := Plan{Name: dnsLabel(firstNonEmpty(sys.Name, sys.ID, fallback))}
	if len(sys.Hardware) == 0 {
		return p, nil
	}
	hw := sys.Hardware[0]
	for _, it := range append(hw.Items, hw.Ports...) {
		if err := p.addItem(name, it); err != nil {
			return p, err
		}
	}
	return p, nil
}

func (p *Plan) addItem(name string, it ovfItem) error {
	rt, err := strconv.Atoi(strings.TrimSpace(it.ResourceType))
	if err != nil {
		return nil // other resource kinds may use vendor values
	}
	switch rt {
	case rasdProcessor:
		n, err := strconv.Atoi(strings.TrimSpace(it.Quantity))
		if err != nil || n < 1 || n > maxCPUs {
			return malformed("%s: OVF processor count %q invalid", name, it.Quantity)
		}
		p.CPUs = n
	case rasdMemory:
		b, err := quantityBytes(it.Quantity, it.Units, "byte * 2^20")
		if err != nil || b < 1<<20 || b > 1<<50 {
			return malformed("%s: OVF memory %q %q invalid", name, it.Quantity, it.Units)
		}
		p.MemoryMiB = int(b >> 20)
	case rasdEthernet:
		p.NICs++
	}
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}

// quantityBytes converts an amount in allocation units ("byte * 2^20",
// "byte*1024", "MegaBytes", "GB" …; def when empty) to bytes.
func quantityBytes(quantity, units, def string) (int64, error) {
	q, ok := new(big.Int).SetString(strings.TrimSpace(quantity), 10)
	if !ok || q.Sign() < 0 {
		return 0, fmt.Errorf("bad quantity %q", quantity)
	}
	if strings.TrimSpace(units) == "" {
		units = def
	}
	m, err := unitBytes(units)
	if err != nil {
		return 0, err
	}
	q.Mul(q, m)
	if !q.IsInt64() {
		return 0, fmt.Errorf("%s %s out of range", quantity, units)
	}
	return q.Int64(), nil
}

// legacyUnits are unit names seen in the wild instead of DSP0004 ones.
var legacyUnits = map[string]int64{
	"byte": 1, "bytes": 1, "b": 1,
	"kb": 1 << 10, "kib": 1 << 10, "kilobytes": 1 << 10, "kilobyte": 1 << 10,
	"mb": 1 << 20, "mib": 1 << 20, "megabytes": 1 << 20, "megabyte": 1 << 20,
	"gb": 1 << 30, "gib": 1 << 30, "gigabytes": 1 << 30, "gigabyte": 1 << 30,
	"tb": 1 << 40, "tib": 1 << 40, "terabytes": 1 << 40, "terabyte": 1 << 40,
}

// unitBytes parses DSP0004 programmatic units: "byte" followed by factors
// "* 2^20", "* 10^3" or "* 1024".
func unitBytes(units string) (*big.Int, error) {
	u := strings.ToLower(strings.Join(strings.Fields(units), ""))
	if n, ok := legacyUnits[u]; ok {
		return big.NewInt(n), nil
	}
	parts := strings.Split(u, "*")
	if parts[0] != "byte" && parts[0] != "bytes" {
		return nil, fmt.Errorf("unknown units %q", units)
	}
	m := big.NewInt(1)
	for _, f := range parts[1:] {
		v, err := unitFactor(f)
		if err != nil {
			return nil, fmt.Errorf("units %q: %w", units, err)
		}
		m.Mul(m, v)
	}
	return m, nil
}

func unitFactor(f string) (*big.Int, error) {
	base, exp, pow := strings.Cut(f, "^")
	b, err := strconv.ParseInt(base, 10, 64)
	if err != nil || b < 1 {
		return nil, fmt.Errorf("bad factor %q", f)
	}
	if !pow {
		return big.NewInt(b), nil
	}
	e, err := strconv.Atoi(exp)
	if err != nil || e < 0 || e > 64 {
		return nil, fmt.Errorf("bad exponent %q", f)
	}
	return new(big.Int).Exp(big.NewInt(b), big.NewInt(int64(e)), nil), nil
}

// diskNames gives each OVF disk a distinct DNS-label name.
func diskNames(disks []ovfDisk) []string {
	seen := map[string]bool{}
	names := make([]string, len(disks))
	for i, d := range disks {
		n := dnsLabel(firstNonEmpty(d.ID, fmt.Sprintf("disk%d", i)))
		for base, k := n, 1; seen[n]; k++ {
			n = fmt.Sprintf("%s-%d", strings.TrimRight(base[:min(len(base), 58)], "-"), k)
		}
		seen[n] = true
		names[i] = n
	}
	return names
}
