package broker

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the password-guessing limits (ThrottleOptions).
const (
	DefaultFreeFailures       = 5
	DefaultAddrLockoutMax     = 5 * time.Minute
	DefaultUserLockoutMax     = time.Minute
	DefaultMaxConcurrentCheck = 2
	DefaultCheckQueueTimeout  = 5 * time.Second

	// lockoutBase is the first lockout after the free failures; each
	// further failure doubles it up to the maximum.
	lockoutBase = time.Second
	// failureMemory is how long a failure counts: a key with no failure for
	// this long starts from zero again.
	failureMemory = 15 * time.Minute
	// maxTracked bounds the failure table; past it the entries that failed
	// longest ago make room. An attacker with more addresses than this
	// gains only the free failures per address.
	maxTracked = 100_000
)

// ThrottleOptions bound password guessing. The zero value uses the
// defaults above.
type ThrottleOptions struct {
	// FreeFailures is how many failed logins an address (or a username) may
	// have before each further failure locks it out, for 1 s doubling per
	// failure.
	FreeFailures int
	// AddrLockoutMax and UserLockoutMax cap the lockout of one source
	// address and of one username. A username's cap is lower: its owner is
	// locked out with the guesser.
	AddrLockoutMax, UserLockoutMax time.Duration
	// MaxConcurrentChecks bounds the bcrypt comparisons running at once,
	// so guessers cannot take every core; a login waits up to
	// CheckQueueTimeout for a turn and is refused after it.
	MaxConcurrentChecks int
	CheckQueueTimeout   time.Duration
}

func (o *ThrottleOptions) setDefaults() {
	if o.FreeFailures == 0 {
		o.FreeFailures = DefaultFreeFailures
	}
	if o.AddrLockoutMax == 0 {
		o.AddrLockoutMax = DefaultAddrLockoutMax
	}
	if o.UserLockoutMax == 0 {
		o.UserLockoutMax = DefaultUserLockoutMax
	}
	if o.MaxConcurrentChecks == 0 {
		o.MaxConcurrentChecks = DefaultMaxConcurrentCheck
	}
	if o.CheckQueueTimeout == 0 {
		o.CheckQueueTimeout = DefaultCheckQueueTimeout
	}
}

func (o ThrottleOptions) validate() error {
	switch {
	case o.FreeFailures < 0:
		return optErr("Throttle.FreeFailures", fmt.Sprintf("must not be negative, got %d", o.FreeFailures))
	case o.AddrLockoutMax < 0:
		return optErr("Throttle.AddrLockoutMax", fmt.Sprintf("must not be negative, got %s", o.AddrLockoutMax))
	case o.UserLockoutMax < 0:
		return optErr("Throttle.UserLockoutMax", fmt.Sprintf("must not be negative, got %s", o.UserLockoutMax))
	case o.MaxConcurrentChecks < 0:
		return optErr("Throttle.MaxConcurrentChecks", fmt.Sprintf("must not be negative, got %d", o.MaxConcurrentChecks))
	case o.CheckQueueTimeout < 0:
		return optErr("Throttle.CheckQueueTimeout", fmt.Sprintf("must not be negative, got %s", o.CheckQueueTimeout))
	}
	return nil
}

// failures is the record of one address or username.
type failures struct {
	count int
	last  time.Time
	until time.Time // locked out before this
}

// throttle tracks failed logins per source address and per username and
// bounds the bcrypt work in flight.
type throttle struct {
	opts ThrottleOptions
	now  func() time.Time
	sem  chan struct{}

	// checks counts the comparisons run; inFlight and peak how many ran at
	// once (the bound's evidence).
	checks, inFlight, peak atomic.Int64

	mu     sync.Mutex
	byAddr map[string]*failures
	byUser map[string]*failures
}

func newThrottle(o ThrottleOptions) *throttle {
	o.setDefaults()
	return &throttle{
		opts:   o,
		now:    time.Now,
		sem:    make(chan struct{}, o.MaxConcurrentChecks),
		byAddr: map[string]*failures{},
		byUser: map[string]*failures{},
	}
}

// remoteHost is the address part of a remote "host:port"; the port changes
// with every connection and must not start a fresh count.
func remoteHost(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}

// lockedOut reports whether the address or the username is locked out now,
// and for how long yet.
func (t *throttle) lockedOut(addr, user string) (bool, time.Duration) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var left time.Duration
	for _, f := range []*failures{t.byAddr[addr], t.byUser[user]} {
		if f != nil && now.Before(f.until) {
			left = max(left, f.until.Sub(now))
		}
	}
	return left > 0, left
}

// fail records a failed login and returns the lockout it starts (0 while
// the free failures last).
func (t *throttle) fail(addr, user string) time.Duration {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.record(t.byAddr, addr, now, t.opts.AddrLockoutMax)
	u := a
	if user != "" {
		u = t.record(t.byUser, user, now, t.opts.UserLockoutMax)
	}
	return max(a, u)
}

func (t *throttle) record(m map[string]*failures, key string, now time.Time, capAt time.Duration) time.Duration {
	f := m[key]
	if f == nil || now.Sub(f.last) > failureMemory {
		if f == nil && len(m) >= maxTracked {
			evictOldest(m, now)
		}
		f = &failures{}
		m[key] = f
	}
	f.count++
	f.last = now
	over := f.count - t.opts.FreeFailures
	if over <= 0 {
		return 0
	}
	d := capAt
	if over < 32 {
		d = min(capAt, lockoutBase<<(over-1))
	}
	f.until = now.Add(d)
	return d
}

// evictOldest makes room in a full table: first the entries whose
// failures are forgotten anyway, then a tenth of the rest (map order is
// random, so no address can count on staying).
func evictOldest(m map[string]*failures, now time.Time) {
	for k, f := range m {
		if now.Sub(f.last) > failureMemory {
			delete(m, k)
		}
	}
	drop := len(m) - maxTracked + maxTracked/10
	for k := range m {
		if drop <= 0 {
			return
		}
		delete(m, k)
		drop--
	}
}

// succeed clears the username's failures. The address keeps its record:
// one device behind a NAT logging in must not reset a guesser's count.
func (t *throttle) succeed(user string) {
	t.mu.Lock()
	delete(t.byUser, user)
	t.mu.Unlock()
}

// check runs fn (a bcrypt comparison) once a slot is free, or reports false
// without running it when none frees up within CheckQueueTimeout.
func (t *throttle) check(fn func() bool) (ok, ran bool) {
	ctx, cancel := context.WithTimeout(context.Background(), t.opts.CheckQueueTimeout)
	defer cancel()
	select {
	case t.sem <- struct{}{}:
	case <-ctx.Done():
		return false, false
	}
	defer func() { <-t.sem }()
	t.checks.Add(1)
	n := t.inFlight.Add(1)
	defer t.inFlight.Add(-1)
	for p := t.peak.Load(); n > p && !t.peak.CompareAndSwap(p, n); p = t.peak.Load() {
	}
	return fn(), true
}
