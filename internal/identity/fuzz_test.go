package identity

import (
	"encoding/json"
	"testing"

	"verge.dev/verge/internal/ca"
)

// FuzzTokenSpec: any body either is refused by tokenSpec or makes a spec
// ca.Tokens accepts, so a request that passed the API's validation never
// fails later as a 500.
func FuzzTokenSpec(f *testing.F) {
	for _, s := range []string{
		`{"serviceAccount":"web"}`,
		`{"namespace":"shop","serviceAccount":"cart.v2","ttl":"30m","uses":0}`,
		`{"namespace":"Bad_NS","serviceAccount":"Web!","ttl":"721h","uses":-1}`,
		`{"serviceAccount":"a","ttl":"1ns","uses":9223372036854775807}`,
	} {
		f.Add(s)
	}
	toks := ca.NewTokens(td, ca.NewMemTokenStore(), nil)
	f.Fuzz(func(t *testing.T, body string) {
		var req TokenRequest
		if json.Unmarshal([]byte(body), &req) != nil {
			return
		}
		spec, err := tokenSpec(req)
		if err != nil {
			return
		}
		if _, _, err := toks.Create(t.Context(), spec); err != nil {
			t.Fatalf("tokenSpec accepted %s but Create refused it: %v", body, err)
		}
	})
}
