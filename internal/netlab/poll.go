package netlab

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// GuestStatus is what the test guest answers on GET /cgi-bin/status
// (guest/README.md).
type GuestStatus struct {
	Hostname    string
	BootID      string
	Counter     int // +1 every 100 ms since boot, in memory
	DiskCounter int
	Marker      string
}

// FetchStatus asks the guest at url (http://IP/cgi-bin/status) once.
func FetchStatus(ctx context.Context, hc *http.Client, url string) (GuestStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return GuestStatus{}, fmt.Errorf("netlab: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return GuestStatus{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return GuestStatus{}, fmt.Errorf("guest answered %s", resp.Status)
	}
	kv := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			kv[k] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return GuestStatus{}, fmt.Errorf("read guest status: %w", err)
	}
	return parseStatus(kv)
}

func parseStatus(kv map[string]string) (GuestStatus, error) {
	st := GuestStatus{Hostname: kv["hostname"], BootID: kv["boot_id"], Marker: kv["marker"]}
	if st.BootID == "" {
		return st, fmt.Errorf("guest status without boot_id: %v", kv)
	}
	var err error
	if st.Counter, err = strconv.Atoi(kv["counter"]); err != nil {
		return st, fmt.Errorf("guest status counter=%q: %w", kv["counter"], err)
	}
	if v, ok := kv["disk_counter"]; ok && v != "" {
		if st.DiskCounter, err = strconv.Atoi(v); err != nil {
			return st, fmt.Errorf("guest status disk_counter=%q: %w", v, err)
		}
	}
	return st, nil
}

// PollOptions tune a Poller.
type PollOptions struct {
	Every       time.Duration // between the starts of requests; default 20 ms
	Timeout     time.Duration // of each request; default 1 s
	DialTimeout time.Duration // of each connect; default 250 ms
	// MaxInFlight bounds the requests at once; default 2 (more flood a
	// guest under TCG: its httpd forks a CGI for each).
	MaxInFlight int
}

// Decrease is a counter value lower than one answered before the request
// started (after it, the counter is compared with the lower value).
type Decrease struct {
	At       time.Time
	From, To int
}

// PollResult is what a Poller saw.
type PollResult struct {
	URL            string
	Started, Ended time.Time
	Requests       int // completed (a request cut by Stop is not counted)
	OK             int
	Failures       int
	Skipped        int // ticks with MaxInFlight requests already waiting
	// TornReads are answers of counter=0 in the same boot after higher
	// values: the guest caught its counter file empty while it was
	// rewritten (guest/build.sh writes it in place, and its status page
	// reads it with one read(2), so an answer is the whole old value, the
	// whole new one, or this empty file). Not a Decrease; the
	// answer counts for the gaps, not in OK.
	TornReads    int
	FirstErr     string
	LastErr      string
	BootIDs      []string // in the order answered, one entry per change
	Hostnames    []string // distinct, in the order answered
	FirstCounter int
	LastCounter  int
	Decreases    []Decrease
	// The disk counter (disk_counter: a file on the guest's root disk,
	// +1 a second), compared like the counter; a guest without one, or a
	// read that found none, answers 0 and is not compared.
	FirstDiskCounter int
	LastDiskCounter  int
	DiskDecreases    []Decrease
	FirstOK, LastOK  time.Time
	// LongestGap is the longest time between two successful answers
	// (also from the last one to the end, when the poller ended on
	// failures), starting at LongestGapStart (the answer before it).
	LongestGap      time.Duration
	LongestGapStart time.Time
}

func (r PollResult) String() string {
	return fmt.Sprintf("%s: %d requests, %d ok, %d failed (last: %s), %d torn reads, boot ids %v, counter %d→%d, %d decreases, disk counter %d→%d, %d decreases, longest gap %s at %s",
		r.URL, r.Requests, r.OK, r.Failures, r.LastErr, r.TornReads, r.BootIDs, r.FirstCounter, r.LastCounter, len(r.Decreases),
		r.FirstDiskCounter, r.LastDiskCounter, len(r.DiskDecreases),
		r.LongestGap.Round(time.Millisecond), r.LongestGapStart.UTC().Format("15:04:05.000"))
}

// Poller reads a guest's status over and over until stopped.
//
// A request starts every Every, without waiting for the one before (up to
// MaxInFlight at once), and a connect gives up after DialTimeout, so a
// connection attempt lost while the guest is paused (TCP retries a SYN
// only after 1 s) hides at most DialTimeout of the moment the guest
// answers again. A
// counter is compared only with answers that completed before its own
// request started (answers of overlapping requests may arrive in any
// order), so a Decrease is always a real step back of the guest.
type Poller struct {
	mu      sync.Mutex
	res     PollResult
	failing bool     // the last completed request failed
	marks   []okMark // answers of the last 2×Timeout, by completion
	floor   int      // the highest counter of older answers (-1: none)
	dfloor  int      // the same for the disk counter
	keep    time.Duration
	cancel  context.CancelFunc
	done    chan struct{}
}

type okMark struct {
	end           time.Time
	counter, disk int
}

// Poll starts reading url (http://IP/cgi-bin/status of a test guest)
// through d every `every` (20 ms in the migration tests) until ctx ends or
// Stop.
func Poll(ctx context.Context, d *Dialer, url string, every time.Duration) *Poller {
	return PollWith(ctx, d, url, PollOptions{Every: every})
}

// PollWith is Poll with options.
func PollWith(ctx context.Context, d *Dialer, url string, o PollOptions) *Poller {
	if o.Every <= 0 {
		o.Every = 20 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 250 * time.Millisecond
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 2
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &Poller{cancel: cancel, done: make(chan struct{}), floor: -1, dfloor: -1, keep: 2 * o.Timeout,
		res: PollResult{URL: url, Started: time.Now()}}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
		defer cancel()
		return d.DialContext(ctx, network, addr)
	}
	hc := &http.Client{Timeout: o.Timeout, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	go func() {
		var wg sync.WaitGroup
		defer close(p.done)
		defer func() {
			wg.Wait()
			p.mu.Lock()
			p.res.Ended = time.Now()
			p.mu.Unlock()
		}()
		slots := make(chan struct{}, o.MaxInFlight)
		t := time.NewTicker(o.Every)
		defer t.Stop()
		for {
			select {
			case slots <- struct{}{}:
				wg.Add(1)
				go func(start time.Time) {
					defer wg.Done()
					defer func() { <-slots }()
					rctx, rcancel := context.WithTimeout(ctx, o.Timeout)
					st, err := FetchStatus(rctx, hc, url)
					rcancel()
					if ctx.Err() != nil {
						return // a request cut by Stop is not a failure
					}
					p.record(start, time.Now(), st, err)
				}(time.Now())
			default:
				p.mu.Lock()
				p.res.Skipped++
				p.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *Poller) record(start, end time.Time, st GuestStatus, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := &p.res
	r.Requests++
	p.failing = err != nil
	if err != nil {
		r.Failures++
		r.LastErr = err.Error()
		if r.FirstErr == "" {
			r.FirstErr = r.LastErr
		}
		return
	}
	if r.OK == 0 {
		r.FirstOK, r.FirstCounter, r.LastOK = end, st.Counter, end
	}
	if gap := end.Sub(r.LastOK); gap > r.LongestGap {
		r.LongestGap, r.LongestGapStart = gap, r.LastOK
	}
	// The highest counter answered before this request started.
	for len(p.marks) > 0 && p.marks[0].end.Before(end.Add(-p.keep)) {
		p.floor = max(p.floor, p.marks[0].counter)
		p.dfloor = max(p.dfloor, p.marks[0].disk)
		p.marks = p.marks[1:]
	}
	floor, dfloor := p.floor, p.dfloor
	for _, m := range p.marks {
		if m.end.Before(start) {
			floor, dfloor = max(floor, m.counter), max(dfloor, m.disk)
		}
	}
	if st.Counter == 0 && floor > 0 && len(r.BootIDs) > 0 && st.BootID == r.BootIDs[len(r.BootIDs)-1] {
		// The guest rewrites its counter file in place; a read that
		// catches it empty (after its retries) answers counter=0.
		r.TornReads++
		if end.After(r.LastOK) {
			r.LastOK = end
		}
		return
	}
	if floor >= 0 && st.Counter < floor {
		r.Decreases = append(r.Decreases, Decrease{At: end, From: floor, To: st.Counter})
		// One step back is one Decrease: later answers compare with it.
		for i := range p.marks {
			p.marks[i].counter = min(p.marks[i].counter, st.Counter)
		}
		p.floor = st.Counter
	}
	if st.DiskCounter > 0 {
		if dfloor >= 0 && st.DiskCounter < dfloor {
			r.DiskDecreases = append(r.DiskDecreases, Decrease{At: end, From: dfloor, To: st.DiskCounter})
			for i := range p.marks {
				p.marks[i].disk = min(p.marks[i].disk, st.DiskCounter)
			}
			p.dfloor = st.DiskCounter
		}
		if r.FirstDiskCounter == 0 {
			r.FirstDiskCounter = st.DiskCounter
		}
		r.LastDiskCounter = st.DiskCounter
	}
	p.marks = append(p.marks, okMark{end: end, counter: st.Counter, disk: st.DiskCounter})
	r.OK++
	if end.After(r.LastOK) {
		r.LastOK = end
	}
	r.LastCounter = st.Counter
	if len(r.BootIDs) == 0 || r.BootIDs[len(r.BootIDs)-1] != st.BootID {
		r.BootIDs = append(r.BootIDs, st.BootID) // every change (also back to an earlier one)
	}
	if !contains(r.Hostnames, st.Hostname) {
		r.Hostnames = append(r.Hostnames, st.Hostname)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Result is what the poller has seen so far.
func (p *Poller) Result() PollResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.res
	r.BootIDs = append([]string(nil), r.BootIDs...)
	r.Hostnames = append([]string(nil), r.Hostnames...)
	r.Decreases = append([]Decrease(nil), r.Decreases...)
	r.DiskDecreases = append([]Decrease(nil), r.DiskDecreases...)
	if r.Ended.IsZero() {
		r.Ended = time.Now()
	}
	if r.OK > 0 && p.failing { // ending on failures: the gap since the last answer counts too
		if gap := r.Ended.Sub(r.LastOK); gap > r.LongestGap {
			r.LongestGap, r.LongestGapStart = gap, r.LastOK
		}
	}
	return r
}

// WaitOK waits until the poller has had n successful answers.
func (p *Poller) WaitOK(ctx context.Context, n int) error {
	for {
		r := p.Result()
		if r.OK >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("netlab: poller had %d of %d answers: %w (%s)", r.OK, n, ctx.Err(), r)
		case <-p.done:
			return fmt.Errorf("netlab: poller stopped after %d of %d answers (%s)", r.OK, n, r)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop ends polling and returns the result.
func (p *Poller) Stop() PollResult {
	p.cancel()
	<-p.done
	return p.Result()
}
