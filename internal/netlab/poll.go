package netlab

import (
	"bufio"
	"context"
	"fmt"
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
	Every   time.Duration // time between the starts of requests; default 20 ms
	Timeout time.Duration // of each request; default 1 s
}

// Decrease is a counter value lower than the one before it.
type Decrease struct {
	At       time.Time
	From, To int
}

// PollResult is what a Poller saw.
type PollResult struct {
	URL             string
	Started, Ended  time.Time
	Requests        int
	OK              int
	Failures        int
	FirstErr        string
	LastErr         string
	BootIDs         []string // in the order seen, one entry per change
	Hostnames       []string // distinct, in the order seen
	FirstCounter    int
	LastCounter     int
	Decreases       []Decrease
	FirstOK, LastOK time.Time
	// LongestGap is the longest time between two successful answers
	// (also from the last one to the end, when the poller ended on
	// failures), starting at LongestGapStart (the answer before it).
	LongestGap      time.Duration
	LongestGapStart time.Time
}

func (r PollResult) String() string {
	return fmt.Sprintf("%s: %d requests, %d ok, %d failed (last: %s), boot ids %v, counter %d→%d, %d decreases, longest gap %s at %s",
		r.URL, r.Requests, r.OK, r.Failures, r.LastErr, r.BootIDs, r.FirstCounter, r.LastCounter, len(r.Decreases),
		r.LongestGap.Round(time.Millisecond), r.LongestGapStart.UTC().Format("15:04:05.000"))
}

// Poller reads a guest's status over and over until stopped.
type Poller struct {
	mu      sync.Mutex
	res     PollResult
	failing bool // the last request failed
	cancel  context.CancelFunc
	done    chan struct{}
}

// Poll starts reading url (http://IP/cgi-bin/status of a test guest)
// through d every `every` (20 ms in the migration tests) until ctx ends or
// Stop. Requests are sequential: a slow answer delays the next one.
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
	ctx, cancel := context.WithCancel(ctx)
	p := &Poller{cancel: cancel, done: make(chan struct{}), res: PollResult{URL: url, Started: time.Now()}}
	hc := d.HTTPClient(o.Timeout)
	go func() {
		defer close(p.done)
		defer func() {
			p.mu.Lock()
			p.res.Ended = time.Now()
			p.mu.Unlock()
		}()
		t := time.NewTicker(o.Every)
		defer t.Stop()
		for {
			rctx, rcancel := context.WithTimeout(ctx, o.Timeout)
			st, err := FetchStatus(rctx, hc, url)
			rcancel()
			if ctx.Err() != nil {
				return // a request cut by Stop is not a failure
			}
			p.record(time.Now(), st, err)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *Poller) record(now time.Time, st GuestStatus, err error) {
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
		r.FirstOK, r.FirstCounter = now, st.Counter
	} else {
		if gap := now.Sub(r.LastOK); gap > r.LongestGap {
			r.LongestGap, r.LongestGapStart = gap, r.LastOK
		}
		if st.Counter < r.LastCounter {
			r.Decreases = append(r.Decreases, Decrease{At: now, From: r.LastCounter, To: st.Counter})
		}
	}
	r.OK++
	r.LastOK, r.LastCounter = now, st.Counter
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
