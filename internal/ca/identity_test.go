package ca

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestSVIDFor(t *testing.T) {
	tests := []struct {
		name    string
		tok     Token
		want    string
		wantErr error
	}{
		{name: "workload", tok: Token{TrustDomain: "mesh.test", Namespace: "shop", ServiceAccount: "cart"}, want: "spiffe://mesh.test/ns/shop/sa/cart"},
		{name: "dotted service account", tok: Token{TrustDomain: "mesh.test", Namespace: "shop", ServiceAccount: "cart.v2"}, want: "spiffe://mesh.test/ns/shop/sa/cart.v2"},
		{name: "no trust domain", tok: Token{Namespace: "shop", ServiceAccount: "cart"}, wantErr: ErrNotWorkloadID},
		{name: "bad namespace", tok: Token{TrustDomain: "mesh.test", Namespace: "..", ServiceAccount: "cart"}, wantErr: ErrNotWorkloadID},
		{name: "empty service account", tok: Token{TrustDomain: "mesh.test", Namespace: "shop"}, wantErr: ErrNotWorkloadID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := SVIDFor(tt.tok)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("SVIDFor error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && id.String() != tt.want {
				t.Errorf("SVIDFor = %s, want %s", id, tt.want)
			}
		})
	}
}

func TestSVIDForCreatedToken(t *testing.T) {
	_, tok, err := newTestTokens(newFakeClock()).Create(t.Context(), webSpec)
	if err != nil {
		t.Fatal(err)
	}
	id, err := SVIDFor(tok)
	if err != nil {
		t.Fatal(err)
	}
	if id != testID {
		t.Errorf("SVIDFor = %s, want %s", id, testID)
	}
}

func TestParseWorkloadID(t *testing.T) {
	type result struct{ NS, SA string }
	tests := []struct {
		id      string
		want    result
		wantErr bool
	}{
		{id: "spiffe://mesh.test/ns/default/sa/web", want: result{"default", "web"}},
		{id: "spiffe://mesh.test/ns/shop/sa/cart.v2", want: result{"shop", "cart.v2"}},
		{id: "spiffe://mesh.test", wantErr: true},
		{id: "spiffe://mesh.test/ns/default", wantErr: true},
		{id: "spiffe://mesh.test/ns/default/sa", wantErr: true},
		{id: "spiffe://mesh.test/ns/default/sa/web/extra", wantErr: true},
		{id: "spiffe://mesh.test/sa/web/ns/default", wantErr: true},
		{id: "spiffe://mesh.test/ns/Default/sa/web", wantErr: true},
		{id: "spiffe://mesh.test/ns/default/sa/_web", wantErr: true},
		{id: "spiffe://mesh.test/foo/default/sa/web", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			ns, sa, err := ParseWorkloadID(spiffeid.RequireFromString(tt.id))
			if tt.wantErr {
				if !errors.Is(err, ErrNotWorkloadID) {
					t.Fatalf("error = %v, want ErrNotWorkloadID", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, result{ns, sa}); diff != "" {
				t.Errorf("ParseWorkloadID (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseWorkloadID: parsing never panics, and an accepted ID formats back
// to itself through WorkloadID.
func FuzzParseWorkloadID(f *testing.F) {
	for _, s := range []string{"spiffe://mesh.test/ns/default/sa/web", "spiffe://td/ns/a/sa/b.c", "spiffe://td/ns//sa/x", "spiffe://td"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return
		}
		ns, sa, err := ParseWorkloadID(id)
		if err != nil {
			return
		}
		back, err := WorkloadID(id.TrustDomain(), ns, sa)
		if err != nil {
			t.Fatalf("WorkloadID(%q, %q) refused what ParseWorkloadID accepted from %q: %v", ns, sa, s, err)
		}
		if back != id {
			t.Fatalf("round trip %q -> %q", id, back)
		}
	})
}
