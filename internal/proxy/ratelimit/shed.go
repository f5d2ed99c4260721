package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

var (
	// ErrShed is returned by Acquire when the request was refused for
	// overload: the queue was full of requests of its class or higher, or
	// a more important request took its place in the queue.
	ErrShed = errors.New("ratelimit: shed under overload")
	// ErrQueueTimeout is returned by Acquire when the request waited in
	// the queue for ShedConfig.MaxWait without getting a slot.
	ErrQueueTimeout = errors.New("ratelimit: queued too long")
)

// ShedConfig configures a Shedder.
type ShedConfig struct {
	// Limit is the number of requests admitted at once, at least 1.
	Limit int
	// MaxQueue is the number of requests that may wait for a slot, at
	// least 0 (0: refuse at once whatever the class).
	MaxQueue int
	// MaxWait bounds the time a request waits in the queue, positive.
	MaxWait time.Duration
	// Classes is the number of priority classes, at least 1; class 0 is
	// the most important (e.g. 0 critical, 1 default, 2 bulk).
	Classes int
	// Reserved is the number of the Limit slots that only class 0 may
	// use, in [0, Limit). With 0, a class 0 request arriving while every
	// slot is busy with other classes waits for one to free (up to one
	// request's duration); with Reserved at least the class 0 concurrency,
	// it is admitted at once and keeps its unloaded latency.
	Reserved int
}

// Shedder is a concurrency limit with a bounded priority queue, safe for
// concurrent use. Requests beyond Limit (beyond Limit-Reserved for
// classes other than 0) wait in the queue, served most important class
// first and in arrival order within a class. When the
// queue is full, an arriving request takes the place of the newest
// waiting request of the least important class below its own (which gets
// ErrShed); if there is none it is refused itself. Under an overload of
// low-class traffic, important requests therefore never wait behind less
// important ones: they wait only for a slot to free.
type Shedder struct {
	cfg ShedConfig
	// releaseFn is s.release made once, so Acquire returns it without
	// allocating a method value per request.
	releaseFn func()
	waiters   sync.Pool
	// onHandoffLocked, when set (tests only), sees each slot handed to a
	// waiter, under mu, to check the queue's invariants under real load.
	onHandoffLocked func(class int)

	mu       sync.Mutex
	inflight int
	queued   int
	// queues[c] holds class c's waiters, oldest first.
	queues []waitList
}

// waiter is one queued request. Its channel gets exactly one value (nil:
// admitted, ErrShed: evicted) from the goroutine that takes it off the
// queue; a waiter that leaves the queue itself gets none.
type waiter struct {
	ch         chan error
	class      int
	queued     bool
	prev, next *waiter
}

// waitList is an intrusive doubly linked FIFO of waiters, so that a
// waiter that gives up leaves it in constant time.
type waitList struct {
	head, tail *waiter
}

func (l *waitList) pushBack(w *waiter) {
	w.prev, w.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = w
	} else {
		l.head = w
	}
	l.tail = w
}

func (l *waitList) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		l.tail = w.prev
	}
	w.prev, w.next = nil, nil
}

// NewShedder returns a Shedder with nothing in flight. Errors name the
// field and the reason.
func NewShedder(c ShedConfig) (*Shedder, error) {
	var err error
	switch {
	case c.Limit < 1:
		err = fmt.Errorf("limit: invalid value %d: must be at least 1", c.Limit)
	case c.MaxQueue < 0:
		err = fmt.Errorf("maxQueue: invalid value %d: must be at least 0", c.MaxQueue)
	case c.MaxWait <= 0:
		err = fmt.Errorf("maxWait: invalid value %v: must be positive", c.MaxWait)
	case c.Classes < 1:
		err = fmt.Errorf("classes: invalid value %d: must be at least 1", c.Classes)
	case c.Reserved < 0 || c.Reserved >= c.Limit:
		err = fmt.Errorf("reserved: invalid value %d: must be in [0, limit %d)", c.Reserved, c.Limit)
	}
	if err != nil {
		return nil, fmt.Errorf("shedder: %w", err)
	}
	s := &Shedder{cfg: c, queues: make([]waitList, c.Classes)}
	s.releaseFn = s.release
	s.waiters.New = func() any { return &waiter{ch: make(chan error, 1)} }
	return s, nil
}

// Acquire admits a request of the given class (out of range counts as the
// least important) or refuses it. It returns at once when a slot is free
// or the request is refused, and otherwise blocks until a slot is handed
// to it, a more important request evicts it (ErrShed), MaxWait passes
// (ErrQueueTimeout) or ctx ends (ctx's error). On success the caller must
// call release exactly once when the request is done; on error release is
// nil. Admission at once does not allocate.
func (s *Shedder) Acquire(ctx context.Context, class int) (release func(), err error) {
	if class < 0 || class >= s.cfg.Classes {
		class = s.cfg.Classes - 1
	}
	s.mu.Lock()
	// Waiters of this class or above exist only while in flight is at
	// their limit (release hands slots to them first), so admitting at
	// once below the limit never overtakes one.
	if s.inflight < s.limit(class) {
		s.inflight++
		s.mu.Unlock()
		return s.releaseFn, nil
	}
	if s.queued >= s.cfg.MaxQueue && !s.evictBelowLocked(class) {
		s.mu.Unlock()
		return nil, ErrShed
	}
	w := s.waiters.Get().(*waiter)
	w.class, w.queued = class, true
	s.queues[class].pushBack(w)
	s.queued++
	s.mu.Unlock()

	timer := time.NewTimer(s.cfg.MaxWait)
	defer timer.Stop()
	select {
	case err = <-w.ch:
	case <-ctx.Done():
		err = s.leave(w, ctx.Err())
	case <-timer.C:
		err = s.leave(w, ErrQueueTimeout)
	}
	s.waiters.Put(w)
	if err != nil {
		return nil, err
	}
	return s.releaseFn, nil
}

// leave takes w off the queue after its wait ended with cause. If another
// goroutine took it off first, w's channel holds the outcome: a slot handed
// to it is given back, since the caller is gone.
func (s *Shedder) leave(w *waiter, cause error) error {
	s.mu.Lock()
	if w.queued {
		s.queues[w.class].remove(w)
		w.queued = false
		s.queued--
		s.mu.Unlock()
		return cause
	}
	s.mu.Unlock()
	if err := <-w.ch; err != nil {
		return err
	}
	s.release()
	return cause
}

// evictBelowLocked sheds the newest waiter of the least important class
// less important than class, and reports whether there was one.
func (s *Shedder) evictBelowLocked(class int) bool {
	for c := len(s.queues) - 1; c > class; c-- {
		if w := s.queues[c].tail; w != nil {
			s.queues[c].remove(w)
			w.queued = false
			s.queued--
			w.ch <- ErrShed // buffered for this one value: never blocks
			return true
		}
	}
	return false
}

// limit is the number of slots class may be admitted into.
func (s *Shedder) limit(class int) int {
	if class == 0 {
		return s.cfg.Limit
	}
	return s.cfg.Limit - s.cfg.Reserved
}

// release hands the slot to the oldest waiter of the most important
// class, or frees it when that class may not use it (reserved slots).
func (s *Shedder) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queued > 0 {
		for c := range s.queues {
			if s.inflight-1 >= s.limit(c) {
				// Limits only shrink with the class: none below may either.
				break
			}
			if w := s.queues[c].head; w != nil {
				s.queues[c].remove(w)
				w.queued = false
				s.queued--
				if s.onHandoffLocked != nil {
					s.onHandoffLocked(c)
				}
				w.ch <- nil // buffered for this one value: never blocks
				return
			}
		}
	}
	s.inflight--
}

// Stats returns the requests in flight and waiting, for metrics.
func (s *Shedder) Stats() (inflight, queued int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight, s.queued
}
