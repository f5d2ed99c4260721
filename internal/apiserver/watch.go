package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/store"
)

// Watch event types, as Kubernetes names them.
const (
	EventAdded    = "ADDED"
	EventModified = "MODIFIED"
	EventDeleted  = "DELETED"
	EventError    = "ERROR"
)

// WatchEvent is one line of a watch stream. For ERROR events Object is a
// Status (410 Expired when the requested resourceVersion is compacted: list
// again and watch from the list's resourceVersion).
type WatchEvent struct {
	Type   string `json:"type"`
	Object any    `json:"object"`
}

// DefaultWatchWriteTimeout bounds writing one watch event to the client: a
// watcher that stops reading is dropped after it, which ends its handler and
// releases its store watch.
const DefaultWatchWriteTimeout = 10 * time.Second

// watch streams newline-delimited WatchEvents until the client goes, stops
// reading for longer than the write timeout, the server shuts down (its
// request context ends) or the store ends the watch. Without a
// resourceVersion (or with "0") it first sends every existing object as
// ADDED, then the changes after that list; with resourceVersion=N it sends
// the changes after revision N.
func (s *Server) watch(w http.ResponseWriter, r *http.Request, k v1alpha1.Kind, prefix string) {
	ctx := r.Context()
	var after int64
	if rv := r.URL.Query().Get("resourceVersion"); rv != "" {
		var err error
		after, err = strconv.ParseInt(rv, 10, 64)
		if err != nil || after < 0 {
			s.writeError(w, r, target{kind: k}, badRequest("invalid resourceVersion %q: must be a non-negative integer", rv))
			return
		}
	}
	var initial []store.KeyValue
	if after == 0 {
		kvs, rev, err := s.st.List(ctx, prefix)
		if err != nil {
			s.writeError(w, r, target{kind: k}, fmt.Errorf("list %s: %w", prefix, err))
			return
		}
		initial, after = kvs, rev
	}
	events, errf, err := s.st.Watch(ctx, prefix, after)
	if err != nil {
		s.writeError(w, r, target{kind: k}, fmt.Errorf("watch %s: %w", prefix, err))
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	// flush pushes what was written to the client within the write timeout.
	// The deadline is lifted afterwards: between events the stream is
	// idle, and HTTP/2 would reset a stream whose deadline passes even then.
	// A writer without deadlines or flushing (a test recorder) is served
	// as it is.
	flush := func() bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.watchWriteTimeout))
		defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false // the client went away or stopped reading
		}
		return true
	}
	send := func(ev WatchEvent) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.watchWriteTimeout))
		if err := enc.Encode(ev); err != nil {
			return false // the client went away or stopped reading
		}
		return flush()
	}
	// Returning early is safe: ctx ends when the handler returns, and the
	// store then closes events and releases the watch.
	for _, kv := range initial {
		obj, err := DecodeStored(k, kv)
		if err != nil {
			send(WatchEvent{Type: EventError, Object: toStatus(target{kind: k}, err)})
			s.logger.Error("watch failed", "prefix", prefix, "error", err)
			return
		}
		if !send(WatchEvent{Type: EventAdded, Object: obj}) {
			return
		}
	}
	// Let the client know the stream is open even when nothing happens.
	if !flush() {
		return
	}
	for ev := range events {
		out, err := watchEvent(k, ev)
		if err != nil {
			send(WatchEvent{Type: EventError, Object: toStatus(target{kind: k}, err)})
			s.logger.Error("watch failed", "prefix", prefix, "error", err)
			return
		}
		if !send(out) {
			return
		}
	}
	if err := errf(); err != nil && ctx.Err() == nil {
		if !errors.Is(err, store.ErrCompacted) {
			s.logger.Error("watch failed", "prefix", prefix, "error", err)
		}
		send(WatchEvent{Type: EventError, Object: toStatus(target{kind: k}, err)})
	}
}

// watchEvent turns a store event into an API event.
func watchEvent(k v1alpha1.Kind, ev store.Event) (WatchEvent, error) {
	switch ev.Type {
	case store.EventDelete:
		var obj v1alpha1.Object
		if len(ev.KV.Value) > 0 {
			o, err := DecodeStored(k, ev.KV)
			if err != nil {
				return WatchEvent{}, err
			}
			obj = o
		} else {
			// The backend did not keep the old value: name the object from its key.
			obj = k.New()
			rest := strings.TrimPrefix(ev.KV.Key, Prefix(k))
			ns, name, _ := strings.Cut(rest, "/")
			obj.SetNamespace(ns)
			obj.SetName(name)
			obj.SetResourceVersion(strconv.FormatInt(ev.KV.ModRevision, 10))
		}
		return WatchEvent{Type: EventDeleted, Object: obj}, nil
	default:
		obj, err := DecodeStored(k, ev.KV)
		if err != nil {
			return WatchEvent{}, err
		}
		typ := EventModified
		if ev.KV.CreateRevision == ev.KV.ModRevision {
			typ = EventAdded
		}
		return WatchEvent{Type: typ, Object: obj}, nil
	}
}
