// Package apiclient owns the Go client of Verge's REST API: typed calls for
// resources (apply, create, update, get, list, delete, watch), the API's
// error Status as a Go error, and the proxy-status report the control plane
// serves. The CLI, the proxy (to register its Workload) and tests use it.
//
// It does not decode files (api/v1alpha1 does) nor serve anything.
package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"verge.dev/verge/api/v1alpha1"
)

// maxResponseBytes bounds what the client reads of one response (or one
// watch event); the server refuses objects over 1 MiB anyway.
const maxResponseBytes = 8 << 20

// Client calls one Verge control plane. It is safe for concurrent use.
type Client struct {
	base  string
	hc    *http.Client
	token string
}

// New returns a client for the API at baseURL ("http://127.0.0.1:7700", or
// https with an httpClient whose transport has ServerTLSConfig).
// httpClient nil means http.DefaultClient. Watch streams run until their
// context ends, so give httpClient no overall Timeout if you watch; bound
// single calls with their context instead.
func New(baseURL string, httpClient *http.Client, opts ...ClientOption) *Client {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	c := &Client{base: strings.TrimRight(baseURL, "/"), hc: httpClient}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Option changes one write.
type Option func(*options)

type options struct {
	dryRun bool
}

// DryRun makes the server run the whole write pipeline (decode, default,
// validate, conflict checks) and return the would-be object without storing
// it (?dryRun=All).
func DryRun() Option { return func(o *options) { o.dryRun = true } }

func collect(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Apply creates obj or replaces the stored object of the same kind,
// namespace and name, whatever its resourceVersion (PUT without one). It
// returns the stored object with server-set fields and defaults. obj is not
// modified.
func (c *Client) Apply(ctx context.Context, obj v1alpha1.Object, opts ...Option) (v1alpha1.Object, error) {
	k, ns, err := locate(obj)
	if err != nil {
		return nil, err
	}
	body, err := encode(obj, true)
	if err != nil {
		return nil, err
	}
	return c.write(ctx, http.MethodPut, k, itemPath(k, ns, obj.GetName()), body, collect(opts))
}

// Create creates obj; it fails with an AlreadyExists StatusError if the
// object exists.
func (c *Client) Create(ctx context.Context, obj v1alpha1.Object, opts ...Option) (v1alpha1.Object, error) {
	k, ns, err := locate(obj)
	if err != nil {
		return nil, err
	}
	body, err := encode(obj, true)
	if err != nil {
		return nil, err
	}
	return c.write(ctx, http.MethodPost, k, listPath(k, ns), body, collect(opts))
}

// Update replaces the stored object only if its resourceVersion still equals
// obj's (a Conflict StatusError otherwise). obj must carry a resourceVersion.
func (c *Client) Update(ctx context.Context, obj v1alpha1.Object, opts ...Option) (v1alpha1.Object, error) {
	k, ns, err := locate(obj)
	if err != nil {
		return nil, err
	}
	if obj.GetResourceVersion() == "" {
		return nil, fmt.Errorf("update %s %s/%s: resourceVersion is required (use Apply to replace unconditionally)", k.Kind, ns, obj.GetName())
	}
	body, err := encode(obj, false)
	if err != nil {
		return nil, err
	}
	return c.write(ctx, http.MethodPut, k, itemPath(k, ns, obj.GetName()), body, collect(opts))
}

// Get returns one object.
func (c *Client) Get(ctx context.Context, kind v1alpha1.Kind, ns, name string) (v1alpha1.Object, error) {
	b, err := c.do(ctx, http.MethodGet, itemPath(kind, defaultNS(ns), name), nil, nil)
	if err != nil {
		return nil, err
	}
	return decodeObject(kind, b)
}

// List returns the objects of kind in namespace ns, or in every namespace
// when ns is "", ordered by namespace and name.
func (c *Client) List(ctx context.Context, kind v1alpha1.Kind, ns string) ([]v1alpha1.Object, error) {
	p := "/apis/" + kind.Group + "/" + kind.Version + "/" + kind.Plural
	if ns != "" {
		p = listPath(kind, ns)
	}
	b, err := c.do(ctx, http.MethodGet, p, nil, nil)
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("decode %s list: %w", kind.Plural, err)
	}
	objs := make([]v1alpha1.Object, 0, len(list.Items))
	for _, it := range list.Items {
		obj, err := decodeObject(kind, it)
		if err != nil {
			return nil, err
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// Delete removes one object (a NotFound StatusError if it is absent).
func (c *Client) Delete(ctx context.Context, kind v1alpha1.Kind, ns, name string, opts ...Option) error {
	q := url.Values{}
	if collect(opts).dryRun {
		q.Set("dryRun", "All")
	}
	_, err := c.do(ctx, http.MethodDelete, itemPath(kind, defaultNS(ns), name), q, nil)
	return err
}

// EventType says what a WatchEvent reports.
type EventType string

// Watch event types.
const (
	Added    EventType = "ADDED"
	Modified EventType = "MODIFIED"
	Deleted  EventType = "DELETED"
	Error    EventType = "ERROR"
)

// WatchEvent is one change seen by Watch. For Error, Object is nil and Err
// says why the stream ended (IsExpired(Err): list again and watch anew).
type WatchEvent struct {
	Type   EventType
	Object v1alpha1.Object
	Err    error
}

// Watch streams changes to objects of kind in ns ("" = every namespace).
// With afterRV 0 it first reports every existing object as Added; otherwise
// the changes after revision afterRV. The channel is closed when ctx ends,
// the server ends the stream or it fails (the last event is then an Error).
// The caller must cancel ctx or read until the channel closes; a goroutine
// owned by the call reads the stream until then.
func (c *Client) Watch(ctx context.Context, kind v1alpha1.Kind, ns string, afterRV int64) (<-chan WatchEvent, error) {
	p := "/apis/" + kind.Group + "/" + kind.Version + "/" + kind.Plural
	if ns != "" {
		p = listPath(kind, ns)
	}
	q := url.Values{"watch": {"1"}}
	if afterRV > 0 {
		q.Set("resourceVersion", strconv.FormatInt(afterRV, 10))
	}
	resp, err := c.send(ctx, http.MethodGet, p, q, nil)
	if err != nil {
		return nil, err
	}
	ch := make(chan WatchEvent)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		emit := func(ev WatchEvent) bool {
			select {
			case ch <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), maxResponseBytes)
		for sc.Scan() {
			ev, err := decodeEvent(kind, sc.Bytes())
			if err != nil {
				ev = WatchEvent{Type: Error, Err: err}
			}
			if !emit(ev) || ev.Type == Error {
				return
			}
		}
		if err := sc.Err(); err != nil && ctx.Err() == nil {
			emit(WatchEvent{Type: Error, Err: fmt.Errorf("watch %s: %w", kind.Plural, err)})
		}
	}()
	return ch, nil
}

func decodeEvent(kind v1alpha1.Kind, line []byte) (WatchEvent, error) {
	var raw struct {
		Type   EventType       `json:"type"`
		Object json.RawMessage `json:"object"`
	}
	if err := json.Unmarshal(line, &raw); err != nil {
		return WatchEvent{}, fmt.Errorf("decode watch event: %w", err)
	}
	if raw.Type == Error {
		se := statusError(0, raw.Object)
		var st struct {
			Code int `json:"code"`
		}
		if json.Unmarshal(raw.Object, &st) == nil {
			se.Code = st.Code
		}
		return WatchEvent{Type: Error, Err: se}, nil
	}
	obj, err := decodeObject(kind, raw.Object)
	if err != nil {
		return WatchEvent{}, err
	}
	return WatchEvent{Type: raw.Type, Object: obj}, nil
}

// ProxyStatus is one proxy's xDS state as the control plane's xDS server
// reports it at GET /api/v1/proxies.
type ProxyStatus struct {
	// ID is the proxy's node ID, WORKLOAD.NAMESPACE.
	ID          string    `json:"id"`
	Namespace   string    `json:"namespace"`
	Workload    string    `json:"workload"`
	Connected   bool      `json:"connected"`
	ConnectedAt time.Time `json:"connectedAt,omitzero"`
	// Types is keyed by xDS type URL
	// (type.googleapis.com/envoy.config.listener.v3.Listener…).
	Types map[string]TypeStatus `json:"types"`
}

// TypeStatus is the state of one xDS type on one proxy.
type TypeStatus struct {
	SentVersion  string `json:"sentVersion"`
	AckedVersion string `json:"ackedVersion"`
	// Nack is the error detail of the proxy's last NACK, empty when the last
	// response was accepted.
	Nack      string    `json:"nack"`
	UpdatedAt time.Time `json:"updatedAt,omitzero"`
}

// ProxyStatus returns the xDS state of every proxy the control plane knows.
func (c *Client) ProxyStatus(ctx context.Context) ([]ProxyStatus, error) {
	b, err := c.do(ctx, http.MethodGet, "/api/v1/proxies", nil, nil)
	if err != nil {
		return nil, err
	}
	var out []ProxyStatus
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decode proxy status: %w", err)
	}
	return out, nil
}

// ServerVersion returns the control plane's version from GET /version: the
// "version" field of a JSON body, or the body itself.
func (c *Client) ServerVersion(ctx context.Context) (string, error) {
	b, err := c.do(ctx, http.MethodGet, "/version", nil, nil)
	if err != nil {
		return "", err
	}
	var v struct {
		Version string `json:"version"`
	}
	if json.Unmarshal(b, &v) == nil && v.Version != "" {
		return v.Version, nil
	}
	return strings.TrimSpace(string(b)), nil
}

func (c *Client) write(ctx context.Context, method string, k v1alpha1.Kind, p string, body []byte, o options) (v1alpha1.Object, error) {
	q := url.Values{}
	if o.dryRun {
		q.Set("dryRun", "All")
	}
	b, err := c.do(ctx, method, p, q, body)
	if err != nil {
		return nil, err
	}
	return decodeObject(k, b)
}

// do sends a request and returns the body of a 2xx response; any other
// response becomes a *StatusError.
func (c *Client) do(ctx context.Context, method, p string, q url.Values, body []byte) ([]byte, error) {
	resp, err := c.send(ctx, method, p, q, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read response: %w", method, p, err)
	}
	return b, nil
}

// send sends a request; a non-2xx response is read and returned as a
// *StatusError, a 2xx one is returned open.
func (c *Client) send(ctx context.Context, method, p string, q url.Values, body []byte) (*http.Response, error) {
	u := c.base + p
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, p, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, p, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
		return nil, statusError(resp.StatusCode, b)
	}
	return resp, nil
}

func locate(obj v1alpha1.Object) (v1alpha1.Kind, string, error) {
	k, ok := v1alpha1.KindOf(obj)
	if !ok {
		return v1alpha1.Kind{}, "", fmt.Errorf("locate %T: not a kind Verge serves", obj)
	}
	if obj.GetName() == "" {
		return v1alpha1.Kind{}, "", fmt.Errorf("locate %s: metadata.name is required", k.Kind)
	}
	return k, defaultNS(obj.GetNamespace()), nil
}

func defaultNS(ns string) string {
	if ns == "" {
		return v1alpha1.DefaultNamespace
	}
	return ns
}

func listPath(k v1alpha1.Kind, ns string) string {
	return "/apis/" + k.Group + "/" + k.Version + "/namespaces/" + url.PathEscape(ns) + "/" + k.Plural
}

func itemPath(k v1alpha1.Kind, ns, name string) string {
	return listPath(k, ns) + "/" + url.PathEscape(name)
}

// encode marshals obj, without its resourceVersion when dropRV is set, and
// with its apiVersion and kind (objects built in code often lack them).
func encode(obj v1alpha1.Object, dropRV bool) ([]byte, error) {
	k, _ := v1alpha1.KindOf(obj)
	raw, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode %s %q: %w", k.Kind, obj.GetName(), err)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("encode %s %q: %w", k.Kind, obj.GetName(), err)
	}
	m["apiVersion"], m["kind"] = k.APIVersion(), k.Kind
	if md, ok := m["metadata"].(map[string]any); ok && dropRV {
		delete(md, "resourceVersion")
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s %q: %w", k.Kind, obj.GetName(), err)
	}
	return b, nil
}

func decodeObject(k v1alpha1.Kind, b []byte) (v1alpha1.Object, error) {
	obj := k.New()
	if err := json.Unmarshal(b, obj); err != nil {
		return nil, fmt.Errorf("decode %s: %w", k.Kind, err)
	}
	return obj, nil
}
