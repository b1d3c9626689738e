package imports

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"math/big"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
)

// OVF namespaces of the envelope (DSP0243 1.x and 2.x).
const (
	ovfNS1 = "http://schemas.dmtf.org/ovf/envelope/1"
	ovfNS2 = "http://schemas.dmtf.org/ovf/envelope/2"
	// ovfNS09 is OVF 0.9, VMware's envelope before the DMTF standard.
	ovfNS09 = "http://www.vmware.com/schema/ovf/1/envelope"
	maxOVF  = 8 << 20
	maxCPUs = 4096
)

// ovfNamespaces are the envelopes imported; OVF 0.9 maps onto the same
// model (its sections are Section elements named by xsi:type, its items
// say InstanceId and Caption).
var ovfNamespaces = []string{ovfNS1, ovfNS2, ovfNS09}

// rasd ResourceType values (CIM_ResourceAllocationSettingData).
const (
	rasdOther     = 1
	rasdIDE       = 5
	rasdProcessor = 3
	rasdMemory    = 4
	rasdEthernet  = 10
	rasdCD        = 15
	rasdDVD       = 16
	rasdDiskDrive = 17
	// rasdOtherStorage is "other storage device": SATA controllers
	// (ResourceSubType AHCI, vmware.sata.ahci)
	rasdOtherStorage = 20
)

// ovfEnvelope is the part of an OVF descriptor an import uses. Element and
// attribute names match in any namespace; the root's namespace is checked.
type ovfEnvelope struct {
	XMLName  xml.Name
	Files    []ovfFile    `xml:"References>File"`
	Disks    []ovfDisk    `xml:"DiskSection>Disk"`
	Options  []ovfConfig  `xml:"DeploymentOptionSection>Configuration"`
	Systems  []ovfNode    `xml:"VirtualSystem"`
	Colls    []ovfNode    `xml:"VirtualSystemCollection"`
	Content  []ovfNode    `xml:"Content"`
	Sections []ovfSection `xml:",any"`
	// Legacy are OVF 0.9 sections (<Section xsi:type="ovf:DiskSection_Type">).
	Legacy []ovfSection09 `xml:"Section"`

	// systems are the VirtualSystems planned: the one asked or the only
	// one, or (Options.AllVMs) all of a vApp in its startup order.
	systems []*ovfNode
	order   map[*ovfNode]int    // a system's ovf:order in its vApp's StartupSection
	users   map[string]*ovfNode // disk id -> the planned VM attaching it, with several VMs planned
	vapp    string              // the name of the multi-VM vApp the systems are from, "" for none
	option  string              // the deployment option in force, "" without a DeploymentOptionSection
	picked  bool                // option was asked for
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
	Parent   string `xml:"parentRef,attr"`
}

type ovfConfig struct {
	ID      string `xml:"id,attr"`
	Default string `xml:"default,attr"`
}

// ovfNode is a VirtualSystem, a VirtualSystemCollection or a Content
// element whose xsi:type says which of the two it is.
type ovfNode struct {
	XMLName  xml.Name
	Type     string         `xml:"type,attr"`
	ID       string         `xml:"id,attr"`
	Name     string         `xml:"Name"`
	Hardware []ovfHardware  `xml:"VirtualHardwareSection"`
	Systems  []ovfNode      `xml:"VirtualSystem"`
	Colls    []ovfNode      `xml:"VirtualSystemCollection"`
	Content  []ovfNode      `xml:"Content"`
	Startup  []ovfStartup   `xml:"StartupSection>Item"`
	VBox     []vboxMachine  `xml:"Machine"`
	Products []ovfProduct   `xml:"ProductSection"`
	Sections []ovfSection   `xml:",any"`
	Legacy   []ovfSection09 `xml:"Section"`
}

// ovfSection09 is an OVF 0.9 section: its kind is its xsi:type
// ("ovf:VirtualHardwareSection_Type"); only disks and hardware are read.
type ovfSection09 struct {
	XMLName  xml.Name
	Type     string       `xml:"type,attr"`
	Required string       `xml:"required,attr"`
	Disks    []ovfDisk    `xml:"Disk"`
	Items    []ovfItem    `xml:"Item"`
	Other    []ovfSection `xml:",any"`
}

// kind is the section's name as OVF 1.x spells the element
// ("VirtualHardwareSection").
func (s ovfSection09) kind() string {
	t := s.Type
	if _, after, ok := strings.Cut(t, ":"); ok {
		t = after
	}
	return strings.TrimSuffix(t, "_Type")
}

// ovfStartup is a StartupSection entry: when a vApp starts a VM.
type ovfStartup struct {
	ID    string `xml:"id,attr"`
	Order string `xml:"order,attr"`
}

type ovfHardware struct {
	Configuration string        `xml:"configuration,attr"`
	Transport     string        `xml:"transport,attr"` // how the OVF environment reaches the guest ("iso", "com.vmware.guestInfo")
	Items         []ovfItem     `xml:"Item"`
	Ports         []ovfItem     `xml:"EthernetPortItem"`
	Storage       []ovfItem     `xml:"StorageItem"`
	Config        []ovfConfigKV `xml:"Config"`
	Other         []ovfSection  `xml:",any"`
}

// ovfConfigKV is a vmw:Config key/value of the hardware, as vCenter and
// ovftool write them ("firmware" = "efi").
type ovfConfigKV struct {
	XMLName  xml.Name
	Required string `xml:"required,attr"`
	Key      string `xml:"key,attr"`
	Value    string `xml:"value,attr"`
}

// ovfProduct is a ProductSection: its properties make the OVF environment
// an appliance reads at first boot.
type ovfProduct struct {
	Required   string `xml:"required,attr"`
	Properties []struct {
		Key string `xml:"key,attr"`
	} `xml:"Property"`
}

// vboxMachine is the part of VirtualBox's vbox:Machine section an import
// reads: the firmware.
type vboxMachine struct {
	XMLName  xml.Name
	Required string `xml:"required,attr"`
	Firmware struct {
		Type string `xml:"type,attr"`
	} `xml:"Hardware>Firmware"`
}

// ovfSection is any other element: only its name and ovf:required matter.
type ovfSection struct {
	XMLName  xml.Name
	Required string `xml:"required,attr"`
}

type ovfItem struct {
	ResourceType string `xml:"ResourceType"`
	SubType      string `xml:"ResourceSubType"`
	Quantity     string `xml:"VirtualQuantity"`
	Units        string `xml:"AllocationUnits"`
	InstanceID   string `xml:"InstanceID"`
	ElementName  string `xml:"ElementName"`
	// OVF 0.9 spellings of InstanceID and ElementName
	InstanceID09  string   `xml:"InstanceId"`
	Caption       string   `xml:"Caption"`
	Parent        string   `xml:"Parent"`
	HostResource  []string `xml:"HostResource"`
	Address       string   `xml:"Address"`
	Connection    []string `xml:"Connection"`
	Bound         string   `xml:"bound,attr"`
	Configuration string   `xml:"configuration,attr"`
}

// knownSections are the elements an import understands or may ignore
// without changing the VM; an element not listed that says
// ovf:required="true" makes the import fail (DSP0243).
var knownSections = map[string]bool{
	"Info": true, "Name": true, "Strings": true, "References": true, "DiskSection": true, "NetworkSection": true,
	"DeploymentOptionSection": true, "VirtualSystem": true, "VirtualSystemCollection": true, "Content": true,
	"AnnotationSection": true, "ProductSection": true, "EulaSection": true, "OperatingSystemSection": true,
	"VirtualHardwareSection": true, "ResourceAllocationSection": true, "StartupSection": true,
	// inside a VirtualHardwareSection
	"System": true, "Item": true, "EthernetPortItem": true, "StorageItem": true,
}

// Options choose among what an appliance offers.
type Options struct {
	// DeploymentOption is the id of an OVF DeploymentOptionSection
	// Configuration; "" is the appliance's default.
	DeploymentOption string
	// VM is the ovf:id or Name of the VirtualSystem to import from a
	// multi-VM vApp; "" when there is one.
	VM string
	// all plans every VirtualSystem of a multi-VM vApp (InspectAll).
	all bool
}

// ErrDeploymentOption is wrapped by the error for a deployment option the
// appliance does not offer (or a source that offers none).
var ErrDeploymentOption = errors.New("unknown deployment option")

// ErrVirtualSystem is wrapped by the error for a VM (Options.VM) the
// appliance does not hold (or a source that is not an appliance).
var ErrVirtualSystem = errors.New("no virtual system")

// parseOVF decodes and checks an OVF descriptor and picks its VirtualSystem
// and deployment option.
func parseOVF(name string, b []byte, opt Options) (*ovfEnvelope, error) {
	var env ovfEnvelope
	d := xml.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&env); err != nil {
		return nil, malformed("%s: OVF: %v", name, err)
	}
	if env.XMLName.Local != "Envelope" || !slices.Contains(ovfNamespaces, env.XMLName.Space) {
		return nil, malformed("%s: not an OVF envelope (root {%s}%s)", name, env.XMLName.Space, env.XMLName.Local)
	}
	root := ovfNode{Systems: env.Systems, Colls: env.Colls, Content: env.Content, Sections: env.Sections, Legacy: env.Legacy}
	w := walker{name: name, v09: env.XMLName.Space == ovfNS09}
	if err := w.collect(&root); err != nil {
		return nil, err
	}
	env.Disks = append(env.Disks, w.disks...)
	systems := w.systems
	switch {
	case len(systems) == 0 && (len(env.Colls) > 0 || len(env.Content) > 0):
		return nil, malformed("%s: OVF VirtualSystemCollection holds no VirtualSystem", name)
	case len(systems) == 0:
		return nil, malformed("%s: OVF without a VirtualSystem", name)
	}
	var ids []string
	for _, sys := range systems {
		ids = append(ids, strconv.Quote(firstNonEmpty(sys.ID, sys.Name)))
	}
	switch {
	case opt.VM != "":
		i := slices.IndexFunc(systems, func(sys *ovfNode) bool {
			return strings.TrimSpace(sys.ID) == opt.VM || strings.TrimSpace(sys.Name) == opt.VM
		})
		if i < 0 {
			return nil, fmt.Errorf("%w %q: %s holds %s", ErrVirtualSystem, opt.VM, name, strings.Join(ids, ", "))
		}
		env.systems = systems[i : i+1]
	case len(systems) > 1 && !opt.all:
		return nil, malformed("%s: OVF with %d virtual systems (a multi-VM vApp: %s): one plan is of one of them (--vm NAME); InspectAll plans them all",
			name, len(systems), strings.Join(ids, ", "))
	default:
		env.systems = systems
	}
	if len(systems) > 1 {
		for _, c := range env.Colls {
			env.vapp = firstNonEmpty(c.Name, c.ID)
		}
		if err := env.startupOrder(name, systems); err != nil {
			return nil, err
		}
	}
	for _, f := range env.Files {
		if err := checkFile(name, f); err != nil {
			return nil, err
		}
	}
	if err := env.chooseOption(name, opt.DeploymentOption); err != nil {
		return nil, err
	}
	if len(env.systems) > 1 {
		if err := env.checkShared(name); err != nil {
			return nil, err
		}
	}
	return &env, nil
}

// maxStartOrder bounds an ovf:order (a VM's start group in its vApp).
const maxStartOrder = 1 << 16

// startupOrder reads the StartupSections of the vApp's collections and
// sorts env.systems by ovf:order, stably: VMs no StartupSection names come
// last, in document order.
func (env *ovfEnvelope) startupOrder(name string, systems []*ovfNode) error {
	byID := map[string]*ovfNode{}
	for _, s := range systems {
		byID[strings.TrimSpace(s.ID)] = s
	}
	env.order = map[*ovfNode]int{}
	var walk func(colls []ovfNode) error
	walk = func(colls []ovfNode) error {
		for _, c := range colls {
			for _, it := range c.Startup {
				sys, ok := byID[strings.TrimSpace(it.ID)]
				if !ok {
					continue // a nested collection's entry, or a stale one: no VM to order
				}
				n, err := strconv.Atoi(strings.TrimSpace(it.Order))
				if err != nil || n < 0 || n > maxStartOrder {
					return malformed("%s: OVF StartupSection entry %q: ovf:order %q is not a whole number from 0 to %d", name, it.ID, it.Order, maxStartOrder)
				}
				if _, dup := env.order[sys]; dup {
					return malformed("%s: OVF StartupSection names VM %q twice", name, it.ID)
				}
				env.order[sys] = n
			}
			if err := walk(c.Colls); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(env.Colls); err != nil {
		return err
	}
	key := func(s *ovfNode) int {
		if n, ok := env.order[s]; ok {
			return n
		}
		return maxStartOrder + 1
	}
	slices.SortStableFunc(env.systems, func(a, b *ovfNode) int { return key(a) - key(b) })
	return nil
}

// walker gathers the VirtualSystems of an envelope.
type walker struct {
	name    string
	v09     bool // an OVF 0.9 envelope
	systems []*ovfNode
	disks   []ovfDisk // from OVF 0.9 DiskSection_Type sections
}

// collect gathers the VirtualSystems under n, checking every level's
// required sections.
func (w *walker) collect(n *ovfNode) error {
	w.fromLegacy(n)
	secs := slices.Clone(n.Sections)
	for _, m := range n.VBox {
		secs = append(secs, ovfSection{XMLName: m.XMLName, Required: m.Required})
	}
	for range n.Products {
		secs = append(secs, ovfSection{XMLName: xml.Name{Space: ovfNS1, Local: "ProductSection"}}) // known
	}
	if err := checkRequired(w.name, secs); err != nil {
		return err
	}
	for _, h := range n.Hardware {
		other := slices.Clone(h.Other)
		for _, c := range h.Config {
			other = append(other, ovfSection{XMLName: c.XMLName, Required: c.Required})
		}
		if err := checkRequired(w.name, other); err != nil {
			return err
		}
	}
	for i := range n.Content {
		c := &n.Content[i]
		_, t, _ := strings.Cut(c.Type, ":")
		if !strings.Contains(c.Type, ":") {
			t = c.Type
		}
		switch t {
		case "VirtualSystem_Type":
			n.Systems = append(n.Systems, *c)
		case "VirtualSystemCollection_Type":
			n.Colls = append(n.Colls, *c)
		default:
			return malformed("%s: OVF Content %q of xsi:type %q (want ovf:VirtualSystem_Type or ovf:VirtualSystemCollection_Type)", w.name, c.ID, c.Type)
		}
	}
	n.Content = nil
	for i := range n.Systems {
		s := &n.Systems[i]
		if len(s.Systems)+len(s.Colls)+len(s.Content) > 0 {
			return malformed("%s: OVF VirtualSystem %q holds virtual systems", w.name, s.ID)
		}
		if err := w.collect(s); err != nil {
			return err
		}
		w.systems = append(w.systems, s)
	}
	for i := range n.Colls {
		if err := w.collect(&n.Colls[i]); err != nil {
			return err
		}
	}
	return nil
}

// fromLegacy maps the OVF 0.9 sections of n onto the 1.x model: a
// VirtualHardwareSection_Type is n's hardware (its items' InstanceId and
// Caption are InstanceID and ElementName), a DiskSection_Type's disks are
// the envelope's, any other is known or not by its xsi:type. In OVF 1.x
// and 2.x a Section element is just an unknown one.
func (w *walker) fromLegacy(n *ovfNode) {
	for _, s := range n.Legacy {
		if !w.v09 {
			n.Sections = append(n.Sections, ovfSection{XMLName: s.XMLName, Required: s.Required})
			continue
		}
		switch s.kind() {
		case "VirtualHardwareSection":
			for i := range s.Items {
				it := &s.Items[i]
				it.InstanceID = firstNonEmpty(it.InstanceID, it.InstanceID09)
				it.ElementName = firstNonEmpty(it.ElementName, it.Caption)
			}
			n.Hardware = append(n.Hardware, ovfHardware{Items: s.Items, Other: s.Other})
		case "DiskSection":
			w.disks = append(w.disks, s.Disks...)
		default:
			n.Sections = append(n.Sections, ovfSection{XMLName: xml.Name{Space: ovfNS09, Local: s.kind()}, Required: s.Required})
		}
	}
	n.Legacy = nil
}

// checkRequired refuses an element the import does not know that says
// ovf:required="true".
func checkRequired(name string, secs []ovfSection) error {
	for _, s := range secs {
		req := strings.TrimSpace(s.Required)
		if (req == "true" || req == "1") && !(knownSections[s.XMLName.Local] && slices.Contains(ovfNamespaces, s.XMLName.Space)) {
			return malformed("%s: OVF section %s (namespace %q) is marked ovf:required=\"true\" and Hangar does not support it",
				name, s.XMLName.Local, s.XMLName.Space)
		}
	}
	return nil
}

// chooseOption sets the deployment option in force: want, else the
// Configuration marked default, else the first.
func (env *ovfEnvelope) chooseOption(name, want string) error {
	ids := env.optionIDs()
	if want != "" {
		if !slices.Contains(ids, want) {
			if len(ids) == 0 {
				return fmt.Errorf("%w %q: %s has no DeploymentOptionSection", ErrDeploymentOption, want, name)
			}
			return fmt.Errorf("%w %q: %s offers %s", ErrDeploymentOption, want, name, strings.Join(ids, ", "))
		}
		env.option, env.picked = want, true
		return nil
	}
	for _, c := range env.Options {
		if d := strings.TrimSpace(c.Default); d == "true" || d == "1" {
			env.option = c.ID
			return nil
		}
	}
	if len(ids) > 0 {
		env.option = ids[0]
	}
	return nil
}

func (env *ovfEnvelope) optionIDs() []string {
	var ids []string
	for _, c := range env.Options {
		ids = append(ids, c.ID)
	}
	return ids
}

// applies reports whether an element with ovf:configuration conf belongs
// to the deployment option in force.
func (env *ovfEnvelope) applies(conf string) bool {
	f := strings.Fields(conf)
	return len(f) == 0 || env.option != "" && slices.Contains(f, env.option)
}

// checkFile refuses references that are not plain files of the package.
func checkFile(name string, f ovfFile) error {
	if err := checkHref(f.Href); err != nil {
		return malformed("%s: OVF file %q: href %q %v", name, f.ID, f.Href, err)
	}
	if f.Compression != "" && f.Compression != "identity" && f.Compression != "gzip" {
		return malformed("%s: OVF file %q: ovf:compression %q is not supported (gzip is)", name, f.Href, f.Compression)
	}
	if f.Size != "" {
		if n, err := strconv.ParseInt(f.Size, 10, 64); err != nil || n < 0 {
			return malformed("%s: OVF file %q: bad size %q", name, f.Href, f.Size)
		}
	}
	if f.ChunkSize != "" {
		if n, err := strconv.ParseInt(f.ChunkSize, 10, 64); err != nil || n <= 0 {
			return malformed("%s: OVF file %q: ovf:chunkSize %q is not a positive number of bytes", name, f.Href, f.ChunkSize)
		}
		if n, err := strconv.ParseInt(f.Size, 10, 64); err != nil || n <= 0 {
			return malformed("%s: OVF file %q: a chunked file needs its ovf:size (got %q) to know its chunks are all there", name, f.Href, f.Size)
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

func (env *ovfEnvelope) fileByHref(href string) (ovfFile, bool) {
	for _, f := range env.Files {
		if f.Href == href {
			return f, true
		}
	}
	return ovfFile{}, false
}

func (env *ovfEnvelope) disk(id string) (ovfDisk, bool) {
	for _, d := range env.Disks {
		if d.ID == id {
			return d, true
		}
	}
	return ovfDisk{}, false
}

// drive is a disk drive item of the plan: the OVF disk it attaches (ID ""
// for a blank disk of capacity bytes).
type drive struct {
	disk     ovfDisk
	bases    []ovfDisk // disk's parent (ovf:parentRef), its parent…
	capacity int64
	item     string
	bus      string // "sata" on an IDE or SATA controller, "" for the default
}

// plan fills a Plan's name, virtual hardware and NICs from the
// VirtualSystem sys, for the deployment option in force, and returns the
// disk drives in item order.
func (env *ovfEnvelope) plan(sys *ovfNode, name, fallback string) (Plan, []drive, error) {
	vmName := firstNonEmpty(sys.Name, sys.ID, fallback)
	if env.vapp != "" {
		vmName = env.vapp + "-" + vmName
	}
	p := Plan{Name: dnsLabel(vmName), DeploymentOption: env.option, DeploymentOptions: env.optionIDs()}
	if err := env.checkFirmware(name, sys); err != nil {
		return p, nil, err
	}
	if env.vapp != "" {
		p.VApp = dnsLabel(env.vapp)
		if n, ok := env.order[sys]; ok {
			p.StartOrder = n
		} else {
			p.StartOrder = -1
		}
	}
	if len(p.DeploymentOptions) > 1 && !env.picked {
		others := slices.DeleteFunc(slices.Clone(p.DeploymentOptions), func(id string) bool { return id == env.option })
		p.Warnings = append(p.Warnings, fmt.Sprintf("OVF deployment option %q imported, the appliance's default; it also offers %s (--deployment-option)",
			env.option, strings.Join(others, ", ")))
	}
	if w := environmentWarning(env, sys); w != "" {
		p.Warnings = append(p.Warnings, w)
	}
	use := env.items(sys)
	byID := map[string]ovfItem{}
	for _, it := range use {
		if id := strings.TrimSpace(it.InstanceID); id != "" {
			byID[id] = it
		}
	}
	var drives []drive
	attached := map[string]string{} // disk id -> item
	based := map[string]bool{}      // disks a drive's delta disk builds on
	macs := map[string]bool{}
	var models deviceModels
	for _, it := range use {
		rt, err := strconv.Atoi(strings.TrimSpace(it.ResourceType))
		if err != nil {
			continue // other resource kinds may use vendor values
		}
		label := firstNonEmpty(it.ElementName, it.InstanceID)
		diskID, fileID, err := hostResource(name, it)
		if err != nil {
			return p, nil, err
		}
		if diskID != "" && (rt != rasdDiskDrive || isNVDIMM(it) || isNVDIMM(byID[strings.TrimSpace(it.Parent)])) {
			what := fmt.Sprintf("a device of resource type %d", rt)
			switch {
			case isNVDIMM(it) || isNVDIMM(byID[strings.TrimSpace(it.Parent)]):
				what = "an NVDIMM"
			case rt == rasdCD || rt == rasdDVD:
				what = "a CD/DVD drive"
			}
			return p, nil, malformed("%s: OVF disk %q backs %s (item %q); Hangar imports disks of disk drives only", name, diskID, what, label)
		}
		switch rt {
		case rasdProcessor:
			n, err := strconv.Atoi(strings.TrimSpace(it.Quantity))
			if err != nil || n < 1 || n > maxCPUs {
				return p, nil, malformed("%s: OVF processor count %q invalid", name, it.Quantity)
			}
			p.CPUs = n
		case rasdMemory:
			b, err := quantityBytes(it.Quantity, it.Units, "byte * 2^20")
			if err != nil || b < 1<<20 || b > 1<<50 {
				return p, nil, malformed("%s: OVF memory %q %q invalid", name, it.Quantity, it.Units)
			}
			p.MemoryMiB = int(b >> 20)
		case rasdEthernet:
			p.NICs = append(p.NICs, p.nic(name, it, label, macs))
			models.nic(it)
		case rasdDiskDrive:
			models.disk(byID[strings.TrimSpace(it.Parent)])
			switch {
			case diskID != "":
				d, ok := env.disk(diskID)
				if !ok {
					return p, nil, malformed("%s: OVF item %q: HostResource names disk %q, which the DiskSection does not hold", name, label, diskID)
				}
				bases, err := env.bases(name, d)
				if err != nil {
					return p, nil, err
				}
				if prev, dup := attached[diskID]; dup {
					return p, nil, malformed("%s: OVF disk %q is attached by two drives (items %q and %q); a disk backs one drive only", name, diskID, prev, label)
				}
				attached[diskID] = label
				for _, b := range bases {
					based[b.ID] = true
				}
				drives = append(drives, drive{disk: d, bases: bases, item: label, bus: busOf(byID[strings.TrimSpace(it.Parent)])})
			case fileID != "":
				if _, ok := env.file(fileID); !ok {
					return p, nil, malformed("%s: OVF item %q: HostResource names file %q, which References does not hold", name, label, fileID)
				}
				key := "file:" + fileID
				if prev, dup := attached[key]; dup {
					return p, nil, malformed("%s: OVF file %q is attached by two drives (items %q and %q); a disk backs one drive only", name, fileID, prev, label)
				}
				attached[key] = label
				drives = append(drives, drive{disk: ovfDisk{ID: fileID, FileRef: fileID}, item: label, bus: busOf(byID[strings.TrimSpace(it.Parent)])})
			default: // a new blank disk of the item's capacity
				b, err := quantityBytes(it.Quantity, it.Units, "byte")
				if strings.TrimSpace(it.Quantity) == "" || err != nil || b <= 0 || b%512 != 0 {
					return p, nil, malformed("%s: OVF disk drive %q has no HostResource and no usable capacity (%q %q)", name, label, it.Quantity, it.Units)
				}
				drives = append(drives, drive{disk: ovfDisk{ID: label}, capacity: b, item: label, bus: busOf(byID[strings.TrimSpace(it.Parent)])})
			}
		case rasdCD, rasdDVD:
			if fileID != "" {
				p.Warnings = append(p.Warnings, fmt.Sprintf("OVF %s %q holds file %q: CD/DVD media are not imported", "drive", label, fileID))
			}
		}
	}
	if w := models.warning(); w != "" {
		p.Warnings = append(p.Warnings, w)
	}
	for _, d := range env.Disks {
		if _, ok := attached[d.ID]; !ok && !based[d.ID] && env.users[d.ID] == nil {
			w := fmt.Sprintf("OVF disk %q is attached to no drive", d.ID)
			if env.option != "" {
				w += fmt.Sprintf(" in deployment option %q", env.option)
			}
			p.Warnings = append(p.Warnings, w+": not imported")
		}
	}
	return p, drives, nil
}

// bases returns the disks a delta disk builds on (ovf:parentRef), nearest
// first, refusing a missing parent, a loop and a chain over maxChain.
func (env *ovfEnvelope) bases(name string, d ovfDisk) ([]ovfDisk, error) {
	var bases []ovfDisk
	seen, top := map[string]bool{d.ID: true}, d.ID
	for d.Parent != "" {
		parent, ok := env.disk(d.Parent)
		switch {
		case !ok:
			return nil, malformed("%s: OVF disk %q is a delta of disk %q (ovf:parentRef), which the DiskSection does not hold", name, d.ID, d.Parent)
		case seen[parent.ID]:
			return nil, malformed("%s: OVF disk %q: its ovf:parentRef chain loops", name, top)
		case len(bases)+2 > maxChain:
			return nil, malformed("%s: OVF disk %q: a chain of more than %d delta disks (ovf:parentRef)", name, top, maxChain)
		case d.FileRef == "":
			return nil, malformed("%s: OVF disk %q is a delta of disk %q (ovf:parentRef) but has no file", name, d.ID, d.Parent)
		}
		seen[parent.ID] = true
		bases = append(bases, parent)
		d = parent
	}
	return bases, nil
}

// items are the hardware items of sys in the deployment option in force,
// without the min/max bounds (limits, not the VM's size).
func (env *ovfEnvelope) items(sys *ovfNode) []ovfItem {
	var use []ovfItem
	for _, hw := range sys.Hardware {
		if !env.applies(hw.Configuration) {
			continue
		}
		for _, it := range slices.Concat(hw.Items, hw.Ports, hw.Storage) {
			if b := strings.TrimSpace(it.Bound); env.applies(it.Configuration) && (b == "" || b == "normal") {
				use = append(use, it)
			}
		}
	}
	return use
}

// checkShared records which planned VM attaches each disk (env.users, so
// that a VM's plan does not call another's disks unattached) and refuses a
// disk two VMs of the vApp attach.
func (env *ovfEnvelope) checkShared(name string) error {
	env.users = map[string]*ovfNode{}
	for _, sys := range env.systems {
		for _, it := range env.items(sys) {
			id, _, err := hostResource(name, it)
			if err != nil || id == "" {
				continue // the VM's own plan reports a bad HostResource
			}
			if prev := env.users[id]; prev != nil && prev != sys {
				return malformed("%s: OVF disk %q is attached by VMs %q and %q of the vApp; shared disks are not imported", name, id,
					firstNonEmpty(prev.ID, prev.Name), firstNonEmpty(sys.ID, sys.Name))
			}
			env.users[id] = sys
		}
	}
	return nil
}

// hostResource returns the disk or file an item's HostResource names
// ("ovf:/disk/ID", "ovf:/file/ID", also without "ovf:").
func hostResource(name string, it ovfItem) (disk, file string, err error) {
	if len(it.HostResource) > 1 {
		return "", "", malformed("%s: OVF item %q has %d HostResources", name, firstNonEmpty(it.ElementName, it.InstanceID), len(it.HostResource))
	}
	if len(it.HostResource) == 0 {
		return "", "", nil
	}
	h := strings.TrimPrefix(strings.TrimSpace(it.HostResource[0]), "ovf:")
	if strings.HasPrefix(h, "//") { // "ovf://disk/ID", seen in old exports
		h = h[1:]
	}
	switch {
	case h == "":
		return "", "", nil
	case strings.HasPrefix(h, "/disk/") && len(h) > len("/disk/"):
		return h[len("/disk/"):], "", nil
	case strings.HasPrefix(h, "/file/") && len(h) > len("/file/"):
		return "", h[len("/file/"):], nil
	}
	return "", "", malformed("%s: OVF item %q: HostResource %q is not ovf:/disk/ID or ovf:/file/ID", name, firstNonEmpty(it.ElementName, it.InstanceID), it.HostResource[0])
}

// busOf is the Hangar bus closest to the controller a disk drive sits on:
// sata for IDE (ResourceType 5) and SATA (20 with an AHCI subtype) ones,
// which every guest has a driver for; "" (virtio) for SCSI and the rest.
func busOf(controller ovfItem) string {
	rt, err := strconv.Atoi(strings.TrimSpace(controller.ResourceType))
	switch {
	case err != nil:
		return ""
	case rt == rasdIDE, rt == rasdOtherStorage && strings.Contains(strings.ToLower(controller.SubType), "ahci"):
		return "sata"
	}
	return ""
}

// deviceModels gathers the OVF's device models Hangar replaces with
// virtio ones: NIC models and the controllers of disks not on bus sata.
type deviceModels struct{ nics, controllers []string }

func (m *deviceModels) nic(it ovfItem) {
	if t := strings.TrimSpace(it.SubType); t != "" && !strings.Contains(strings.ToLower(t), "virtio") && !slices.Contains(m.nics, t) {
		m.nics = append(m.nics, t)
	}
}

func (m *deviceModels) disk(controller ovfItem) {
	t := strings.TrimSpace(controller.SubType)
	if busOf(controller) == "" && t != "" && !strings.Contains(strings.ToLower(t), "virtio") && !slices.Contains(m.controllers, t) {
		m.controllers = append(m.controllers, t)
	}
}

// warning says which models become virtio ("" for none): a guest without
// virtio drivers would not find its disks or network.
func (m *deviceModels) warning() string {
	var what []string
	if len(m.controllers) > 0 {
		what = append(what, "disks on "+strings.Join(m.controllers, ", ")+" controllers are virtio disks")
	}
	if len(m.nics) > 0 {
		what = append(what, strings.Join(m.nics, ", ")+" NICs are virtio-net")
	}
	if len(what) == 0 {
		return ""
	}
	return virtioWarning + strings.Join(what, "; ") + " (Hangar's models): a guest without virtio drivers will not find them"
}

// virtioWarning starts the warning of deviceModels.
const virtioWarning = "OVF devices become virtio: "

// checkFirmware refuses a VM that asks for UEFI firmware (vCenter's
// vmw:Config firmware=efi, VirtualBox's Firmware type EFI…): Hangar VMs
// boot with BIOS, and such a guest would not boot.
func (env *ovfEnvelope) checkFirmware(name string, sys *ovfNode) error {
	for _, hw := range sys.Hardware {
		if !env.applies(hw.Configuration) {
			continue
		}
		for _, c := range hw.Config {
			if strings.TrimSpace(c.Key) == "firmware" && !strings.EqualFold(strings.TrimSpace(c.Value), "bios") {
				return malformed("%s: OVF VM %q asks for %s firmware (vmw:Config firmware=%q); Hangar VMs boot with BIOS only", name, firstNonEmpty(sys.Name, sys.ID), c.Value, c.Value)
			}
		}
	}
	for _, m := range sys.VBox {
		if t := strings.TrimSpace(m.Firmware.Type); t != "" && !strings.EqualFold(t, "BIOS") {
			return malformed("%s: OVF VM %q asks for %s firmware (vbox:Machine Firmware type=%q); Hangar VMs boot with BIOS only", name, firstNonEmpty(sys.Name, sys.ID), t, t)
		}
	}
	return nil
}

// environmentWarning says when the VM expects its OVF environment (the
// ProductSection properties, through ovf:transport) which Hangar does not
// deliver: such an appliance may wait to be configured.
func environmentWarning(env *ovfEnvelope, sys *ovfNode) string {
	var transports []string
	for _, hw := range sys.Hardware {
		if t := strings.TrimSpace(hw.Transport); t != "" && env.applies(hw.Configuration) {
			transports = append(transports, t)
		}
	}
	n := 0
	for _, p := range sys.Products {
		n += len(p.Properties)
	}
	if len(transports) == 0 || n == 0 {
		return ""
	}
	return fmt.Sprintf("OVF VM %q reads %d ProductSection properties through ovf:transport %q: Hangar does not deliver an OVF environment, so set them in the guest yourself",
		firstNonEmpty(sys.Name, sys.ID), n, strings.Join(transports, " "))
}

func isNVDIMM(it ovfItem) bool {
	return strings.Contains(strings.ToLower(it.SubType), "nvdimm")
}

// nic maps an Ethernet item; a MAC the OVF gives is kept when it is a
// usable unicast address, else replaced with a warning.
func (p *Plan) nic(name string, it ovfItem, label string, macs map[string]bool) NIC {
	n := NIC{Label: label}
	if len(it.Connection) > 0 {
		n.Network = strings.TrimSpace(it.Connection[0])
	}
	if a := strings.TrimSpace(it.Address); a != "" {
		hw, err := net.ParseMAC(a)
		switch {
		case err != nil || len(hw) != 6:
			p.Warnings = append(p.Warnings, fmt.Sprintf("OVF NIC %q: %q is not a MAC address; it gets a new one", label, a))
		case hw[0]&1 != 0 || bytes.Equal(hw, make(net.HardwareAddr, 6)):
			p.Warnings = append(p.Warnings, fmt.Sprintf("OVF NIC %q: %s is not a unicast address; it gets a new one", label, hw))
		case macs[hw.String()]:
			p.Warnings = append(p.Warnings, fmt.Sprintf("OVF NIC %q: MAC %s is used by another NIC; it gets a new one", label, hw))
		default:
			n.MAC = hw.String()
			macs[n.MAC] = true
		}
	}
	return n
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

// uniqueLabel returns the DNS label n, or if seen has it n-k, n-(k+1)…
// (cut to stay a label), and records the result in seen.
func uniqueLabel(seen map[string]bool, n string, k int) string {
	for base := n; seen[n]; k++ {
		n = fmt.Sprintf("%s-%d", strings.TrimRight(base[:min(len(base), 58)], "-"), k)
	}
	seen[n] = true
	return n
}

// diskNames gives each OVF disk a distinct DNS-label name.
func diskNames(disks []ovfDisk) []string {
	seen := map[string]bool{}
	names := make([]string, len(disks))
	for i, d := range disks {
		names[i] = uniqueLabel(seen, dnsLabel(firstNonEmpty(d.ID, fmt.Sprintf("disk%d", i))), 1)
	}
	return names
}
