package topology

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"strings"

	"verge.dev/verge/internal/telemetry"
)

// ErrTooManyTaps is Tap's refusal when Options.MaxTaps subscribers are
// active.
var ErrTooManyTaps = errors.New("topology: too many active taps")

// MaxTapRate bounds a tap's per-proxy sampling rate.
const MaxTapRate = 100

type tapSub struct {
	req telemetry.TapRequest
	ch  chan telemetry.TapEvent
	// dropped counts events lost because the subscriber was slow.
	dropped uint64
}

// Tap subscribes to sampled requests to or from service ("NAME.NS"): the
// tap request, with a random id, rides in every ReportResponse from now
// on, and the events proxies send back for it arrive on the returned
// channel. maxPerSecond (clamped to 1..MaxTapRate) bounds each proxy's
// samples. Events that find the channel full are dropped: Ingest never
// waits for a subscriber. When ctx ends the tap is removed and the channel
// closed. It fails with ErrTooManyTaps when Options.MaxTaps taps are active.
func (a *Aggregator) Tap(ctx context.Context, service string, maxPerSecond int) (<-chan telemetry.TapEvent, error) {
	var id [8]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	sub := &tapSub{
		req: telemetry.TapRequest{ID: hex.EncodeToString(id[:]), Service: service, MaxPerSecond: min(max(maxPerSecond, 1), MaxTapRate)},
		ch:  make(chan telemetry.TapEvent, defaultTapBuffer),
	}
	a.tapMu.Lock()
	if len(a.taps) >= a.opts.MaxTaps {
		a.tapMu.Unlock()
		return nil, ErrTooManyTaps
	}
	a.taps[sub.req.ID] = sub
	a.tapMu.Unlock()
	context.AfterFunc(ctx, func() {
		a.tapMu.Lock()
		delete(a.taps, sub.req.ID)
		// Closing under tapMu: deliver sends under it too, so it never
		// sends on a closed channel.
		close(sub.ch)
		a.tapMu.Unlock()
	})
	return sub.ch, nil
}

// deliver hands tap events to their subscribers without blocking.
func (a *Aggregator) deliver(events []telemetry.TapEvent) {
	if len(events) == 0 {
		return
	}
	a.tapMu.Lock()
	defer a.tapMu.Unlock()
	for _, e := range events {
		sub, ok := a.taps[e.TapID]
		if !ok {
			continue // a tap that ended since the proxy learnt of it
		}
		select {
		case sub.ch <- e:
		default:
			sub.dropped++
		}
	}
}

// response is the ReportResponse for every proxy: all active taps (a proxy
// samples only the requests whose source or destination is a tap's
// service), and a short interval while there are any so that taps feel
// live.
func (a *Aggregator) response() telemetry.ReportResponse {
	a.tapMu.Lock()
	defer a.tapMu.Unlock()
	if len(a.taps) == 0 {
		return telemetry.ReportResponse{}
	}
	r := telemetry.ReportResponse{Taps: make([]telemetry.TapRequest, 0, len(a.taps)), Interval: activeTapInterval}
	for _, s := range a.taps {
		r.Taps = append(r.Taps, s.req)
	}
	slices.SortFunc(r.Taps, func(x, y telemetry.TapRequest) int { return strings.Compare(x.ID, y.ID) })
	return r
}
