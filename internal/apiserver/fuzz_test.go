package apiserver_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"verge.dev/verge/internal/apiserver"
	"verge.dev/verge/internal/store/bolt"
)

// FuzzWrite checks that no request body makes the server fail with 500 or
// panic: every body is stored, refused as bad (400), invalid (422), too large
// (413) or conflicting (409).
func FuzzWrite(f *testing.F) {
	for _, seed := range []string{svcYAML, svcYAML2, "", "{", "[]", "null", "metadata: 5", "---\n---\n", "kind: Workload\n",
		`{"metadata":{"name":"web","resourceVersion":"9"},"spec":{"ports":[{"port":1e3}]}}`,
		"metadata:\n  name: web\n  labels: {\"a/b/c\": x}\nspec: {ports: [{port: 80, protocol: TCP, targetPort: -1}]}\n"} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
	}
	logger := slog.New(slog.DiscardHandler)
	st, err := bolt.Open(filepath.Join(f.TempDir(), "verge.db"), logger)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	h := apiserver.New(st, logger).Handler()
	f.Fuzz(func(t *testing.T, body []byte, put bool) {
		method, path := http.MethodPost, svcPath
		if put {
			method, path = http.MethodPut, svcPath+"/web"
		}
		req := httptest.NewRequestWithContext(t.Context(), method, path, bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusCreated, http.StatusBadRequest, http.StatusUnprocessableEntity,
			http.StatusRequestEntityTooLarge, http.StatusConflict, http.StatusNotFound:
		default:
			t.Errorf("%s %q: code %d, body %s", method, body, rec.Code, rec.Body)
		}
	})
}
