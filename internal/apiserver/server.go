// Package apiserver owns Verge's REST API for resources: the HTTP handlers
// that decode, default, validate and store objects, the mapping of their
// failures to Kubernetes-style Status bodies, and the layout of resources in
// the store (Key, Prefix, DecodeStored), which the registry reads back.
//
// It also owns Guard (auth.go), the authentication and authorization in
// front of the control plane's whole API: who may write what.
//
// It does not own the HTTP listener (the control plane mounts Handler at
// "/apis/"), the resource types or their validation (api/v1alpha1), or the
// store backends (internal/store).
//
// Paths follow Kubernetes:
//
//	GET    /apis                                             discovery
//	GET    /apis/{group}/{version}/{plural}                  list (all namespaces), ?watch=1
//	GET    /apis/{group}/{version}/namespaces/{ns}/{plural}  list, ?watch=1
//	POST   /apis/{group}/{version}/namespaces/{ns}/{plural}  create
//	GET    /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}
//	PUT    /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}  replace or create
//	DELETE /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}
//
// Every write runs v1alpha1.DecodeOne → Default → Validate before the store
// sees it, so nothing invalid is ever stored; ?dryRun=All runs the same
// pipeline and stops before the store.
package apiserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/store"
)

// MaxBodyBytes is the largest request body the server reads; larger bodies
// are refused with 413.
const MaxBodyBytes = 1 << 20

// maxWriteAttempts bounds the read-modify-write retries of an unconditional
// replace that races other writers.
const maxWriteAttempts = 5

// Server serves the resource API over a store. It holds no state of its own
// besides its collaborators and is safe for concurrent use.
type Server struct {
	st     store.Store
	logger *slog.Logger
	now    func() time.Time
	// watchWriteTimeout bounds writing one watch event.
	watchWriteTimeout time.Duration
}

// Option configures a Server.
type Option func(*Server)

// WithClock sets the clock used for creationTimestamp (time.Now by default).
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// WithWatchWriteTimeout sets how long writing one watch event to a client
// may take before the watch is dropped (DefaultWatchWriteTimeout by default).
func WithWatchWriteTimeout(d time.Duration) Option {
	return func(s *Server) { s.watchWriteTimeout = d }
}

// New returns a Server storing resources in st. The caller keeps ownership
// of st and closes it after the server's handler is no longer in use.
func New(st store.Store, logger *slog.Logger, opts ...Option) *Server {
	s := &Server{st: st, logger: logger.With("component", "apiserver"), now: time.Now, watchWriteTimeout: DefaultWatchWriteTimeout}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Handler returns the API's HTTP handler. It expects full paths starting
// with "/apis" (mount it at "/apis/" and "/apis" without stripping).
func (s *Server) Handler() http.Handler {
	const (
		list = "/apis/{group}/{version}/namespaces/{ns}/{plural}"
		item = list + "/{name}"
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /apis", s.discovery)
	mux.HandleFunc("GET /apis/{$}", s.discovery)
	mux.HandleFunc("GET /apis/{group}/{version}/{plural}", s.list)
	mux.HandleFunc("GET "+list, s.list)
	mux.HandleFunc("POST "+list, s.create)
	mux.HandleFunc("GET "+item, s.get)
	mux.HandleFunc("PUT "+item, s.replace)
	mux.HandleFunc("DELETE "+item, s.delete)
	mux.HandleFunc("/apis/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			s.writeError(w, r, target{}, &requestError{code: http.StatusMethodNotAllowed,
				reason: metav1.StatusReasonMethodNotAllowed, msg: "method " + r.Method + " is not supported on " + r.URL.Path})
			return
		}
		s.writeError(w, r, target{}, &requestError{code: http.StatusNotFound,
			reason: metav1.StatusReasonNotFound, msg: "the server could not find the requested resource " + r.URL.Path})
	})
	return mux
}

// APIResource is one kind in the discovery document.
type APIResource struct {
	Group      string   `json:"group"`
	Version    string   `json:"version"`
	Kind       string   `json:"kind"`
	Plural     string   `json:"plural"`
	ShortNames []string `json:"shortNames,omitempty"`
	Namespaced bool     `json:"namespaced"`
}

// Discovery is the body of GET /apis.
type Discovery struct {
	Kind      string        `json:"kind"`
	Resources []APIResource `json:"resources"`
}

func (s *Server) discovery(w http.ResponseWriter, r *http.Request) {
	d := Discovery{Kind: "APIResourceList"}
	for _, k := range v1alpha1.Kinds {
		d.Resources = append(d.Resources, APIResource{
			Group: k.Group, Version: k.Version, Kind: k.Kind, Plural: k.Plural, ShortNames: k.Short, Namespaced: true,
		})
	}
	writeJSON(w, http.StatusOK, d)
}

// kindOf resolves the path's group, version and plural to a served kind.
func kindOf(r *http.Request) (v1alpha1.Kind, error) {
	g, v, p := r.PathValue("group"), r.PathValue("version"), r.PathValue("plural")
	for _, k := range v1alpha1.Kinds {
		if k.Group == g && k.Version == v && k.Plural == p {
			return k, nil
		}
	}
	return v1alpha1.Kind{}, &requestError{code: http.StatusNotFound, reason: metav1.StatusReasonNotFound,
		msg: fmt.Sprintf("the server does not serve %q in %s/%s", p, g, v)}
}

// dryRun reports whether the request asks for ?dryRun=All.
func dryRun(r *http.Request) (bool, error) {
	switch v := r.URL.Query().Get("dryRun"); v {
	case "":
		return false, nil
	case "All":
		return true, nil
	default:
		return false, badRequest("invalid dryRun %q: only \"All\" is supported", v)
	}
}

// listBody is the body of a list response.
type listBody struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ListMeta   `json:"metadata"`
	Items      []v1alpha1.Object `json:"items"`
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	k, err := kindOf(r)
	if err != nil {
		s.writeError(w, r, target{}, err)
		return
	}
	prefix := Prefix(k)
	if ns := r.PathValue("ns"); ns != "" {
		prefix = namespacePrefix(k, ns)
	}
	if v := r.URL.Query().Get("watch"); v == "1" || v == "true" {
		s.watch(w, r, k, prefix)
		return
	}
	kvs, rev, err := s.st.List(r.Context(), prefix)
	if err != nil {
		s.writeError(w, r, target{kind: k}, fmt.Errorf("list %s: %w", prefix, err))
		return
	}
	body := listBody{
		APIVersion: k.APIVersion(),
		Kind:       k.Kind + "List",
		Metadata:   metav1.ListMeta{ResourceVersion: strconv.FormatInt(rev, 10)},
		Items:      make([]v1alpha1.Object, 0, len(kvs)),
	}
	for _, kv := range kvs {
		obj, err := DecodeStored(k, kv)
		if err != nil {
			s.writeError(w, r, target{kind: k}, err)
			return
		}
		body.Items = append(body.Items, obj)
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	k, err := kindOf(r)
	if err != nil {
		s.writeError(w, r, target{}, err)
		return
	}
	t := target{kind: k, name: r.PathValue("name")}
	kv, err := s.st.Get(r.Context(), Key(k, r.PathValue("ns"), t.name))
	if err != nil {
		s.writeError(w, r, t, err)
		return
	}
	obj, err := DecodeStored(k, kv)
	if err != nil {
		s.writeError(w, r, t, err)
		return
	}
	writeJSON(w, http.StatusOK, obj)
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	k, err := kindOf(r)
	if err != nil {
		s.writeError(w, r, target{}, err)
		return
	}
	ns := r.PathValue("ns")
	dry, err := dryRun(r)
	if err != nil {
		s.writeError(w, r, target{kind: k}, err)
		return
	}
	obj, err := s.admit(w, r, k, ns, "")
	if err != nil {
		s.writeError(w, r, target{kind: k, name: nameOf(obj)}, err)
		return
	}
	t := target{kind: k, name: obj.GetName()}
	if err := s.stampNew(obj); err != nil {
		s.writeError(w, r, t, err)
		return
	}
	key := Key(k, ns, obj.GetName())
	if dry {
		if _, err := s.st.Get(r.Context(), key); err == nil {
			s.writeError(w, r, t, store.ErrExists)
			return
		} else if !errors.Is(err, store.ErrNotFound) {
			s.writeError(w, r, t, err)
			return
		}
		writeJSON(w, http.StatusCreated, obj)
		return
	}
	if err := s.createStored(r.Context(), key, obj); err != nil {
		s.writeError(w, r, t, err)
		return
	}
	writeJSON(w, http.StatusCreated, obj)
}

// replace is PUT: a conditional update when the body carries a
// resourceVersion, otherwise create-or-replace (what `verge apply` uses).
// A replace that changes nothing writes nothing and keeps the
// resourceVersion, so applying the same file twice is a no-op.
func (s *Server) replace(w http.ResponseWriter, r *http.Request) {
	t, ns, dry, err := itemRequest(r)
	if err != nil {
		s.writeError(w, r, t, err)
		return
	}
	k, name := t.kind, t.name
	obj, err := s.admit(w, r, k, ns, name)
	if err != nil {
		s.writeError(w, r, t, err)
		return
	}
	wantRev, err := precondition("metadata.resourceVersion", obj.GetResourceVersion())
	if err != nil {
		s.writeError(w, r, t, err)
		return
	}
	key := Key(k, ns, name)
	ctx := r.Context()
	for range maxWriteAttempts {
		cur, err := s.st.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			if wantRev != 0 {
				s.writeError(w, r, t, err)
				return
			}
			if err := s.stampNew(obj); err != nil {
				s.writeError(w, r, t, err)
				return
			}
			if dry {
				writeJSON(w, http.StatusCreated, obj)
				return
			}
			err := s.createStored(ctx, key, obj)
			if errors.Is(err, store.ErrExists) {
				continue // created concurrently: replace it on the next attempt
			}
			if err != nil {
				s.writeError(w, r, t, err)
				return
			}
			writeJSON(w, http.StatusCreated, obj)
			return
		}
		if err != nil {
			s.writeError(w, r, t, err)
			return
		}
		if wantRev != 0 && cur.ModRevision != wantRev {
			s.writeError(w, r, t, store.ErrConflict)
			return
		}
		old, err := DecodeStored(k, cur)
		if err != nil {
			s.writeError(w, r, t, err)
			return
		}
		b, err := stampUpdate(old, obj)
		if err != nil {
			s.writeError(w, r, t, err)
			return
		}
		if dry || bytes.Equal(b, cur.Value) {
			obj.SetResourceVersion(strconv.FormatInt(cur.ModRevision, 10))
			writeJSON(w, http.StatusOK, obj)
			return
		}
		rev, err := s.st.Update(ctx, key, b, cur.ModRevision)
		if errors.Is(err, store.ErrConflict) && wantRev == 0 {
			continue // lost a race with another writer: merge metadata again
		}
		if err != nil {
			s.writeError(w, r, t, err)
			return
		}
		obj.SetResourceVersion(strconv.FormatInt(rev, 10))
		writeJSON(w, http.StatusOK, obj)
		return
	}
	s.writeError(w, r, t, store.ErrConflict)
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	t, ns, dry, err := itemRequest(r)
	if err != nil {
		s.writeError(w, r, t, err)
		return
	}
	k, name := t.kind, t.name
	wantRev, err := precondition("resourceVersion", r.URL.Query().Get("resourceVersion"))
	if err != nil {
		s.writeError(w, r, t, err)
		return
	}
	key := Key(k, ns, name)
	if dry {
		cur, err := s.st.Get(r.Context(), key)
		if err == nil && wantRev != 0 && cur.ModRevision != wantRev {
			err = store.ErrConflict
		}
		if err != nil {
			s.writeError(w, r, t, err)
			return
		}
	} else if _, err := s.st.Delete(r.Context(), key, wantRev); err != nil {
		s.writeError(w, r, t, err)
		return
	}
	writeJSON(w, http.StatusOK, metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusSuccess,
		Code:     http.StatusOK,
		Details:  &metav1.StatusDetails{Name: name, Group: k.Group, Kind: k.Plural},
	})
}

// itemRequest reads what a write to one object needs from its request: the
// target (kind and name), the namespace and ?dryRun. On error, t is the
// target to report the error against (empty when the kind is unknown).
func itemRequest(r *http.Request) (t target, ns string, dry bool, err error) {
	k, err := kindOf(r)
	if err != nil {
		return target{}, "", false, err
	}
	t = target{kind: k, name: r.PathValue("name")}
	dry, err = dryRun(r)
	return t, r.PathValue("ns"), dry, err
}

// precondition parses the resourceVersion a write is conditional on; "" is
// none (0). what names where it came from in the error.
func precondition(what, rv string) (int64, error) {
	if rv == "" {
		return 0, nil
	}
	rev, err := strconv.ParseInt(rv, 10, 64)
	if err != nil || rev <= 0 {
		return 0, badRequest("invalid %s %q: must be a positive integer", what, rv)
	}
	return rev, nil
}

// stampNew sets the metadata the server owns on a new object.
func (s *Server) stampNew(obj v1alpha1.Object) error {
	uid, err := newUID()
	if err != nil {
		return err
	}
	obj.SetUID(types.UID(uid))
	obj.SetCreationTimestamp(metav1.NewTime(s.now().UTC().Truncate(time.Second)))
	obj.SetGeneration(1)
	obj.SetResourceVersion("")
	return nil
}

// createStored writes a new object and sets its resourceVersion.
func (s *Server) createStored(ctx context.Context, key string, obj v1alpha1.Object) error {
	b, err := encodeStored(obj)
	if err != nil {
		return err
	}
	rev, err := s.st.Create(ctx, key, b)
	if err != nil {
		return fmt.Errorf("create %s: %w", key, err)
	}
	obj.SetResourceVersion(strconv.FormatInt(rev, 10))
	return nil
}

// stampUpdate carries the server-owned metadata of old over to obj, bumps
// the generation when the spec changed, and returns obj's stored form.
func stampUpdate(old, obj v1alpha1.Object) ([]byte, error) {
	obj.SetUID(old.GetUID())
	obj.SetCreationTimestamp(old.GetCreationTimestamp())
	gen := old.GetGeneration()
	changed, err := specChanged(old, obj)
	if err != nil {
		return nil, err
	}
	if changed {
		gen++
	}
	obj.SetGeneration(gen)
	return encodeStored(obj)
}

func specChanged(a, b v1alpha1.Object) (bool, error) {
	spec := func(o v1alpha1.Object) ([]byte, error) {
		raw, err := json.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("encode %q: %w", o.GetName(), err)
		}
		var s struct {
			Spec json.RawMessage `json:"spec"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("decode spec of %q: %w", o.GetName(), err)
		}
		return s.Spec, nil
	}
	sa, err := spec(a)
	if err != nil {
		return false, err
	}
	sb, err := spec(b)
	if err != nil {
		return false, err
	}
	return !bytes.Equal(sa, sb), nil
}

// newUID returns a random (version 4) UUID.
func newUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate uid: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

func nameOf(obj v1alpha1.Object) string {
	if obj == nil {
		return ""
	}
	return obj.GetName()
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, t target, err error) {
	st := toStatus(t, err)
	if st.Code == http.StatusInternalServerError {
		// The client only sees "internal error"; the cause is lost work for
		// the operator to investigate.
		s.logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	writeJSON(w, int(st.Code), st)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b = []byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"InternalError","code":500,"message":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
