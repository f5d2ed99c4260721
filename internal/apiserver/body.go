package apiserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"verge.dev/verge/api/v1alpha1"
)

// admit reads a write's body and runs it through the pipeline every stored
// object takes: reconcile with the path, DecodeOne (strict), Default,
// Validate. name is "" for a create, whose name comes from the body. On a
// validation failure the decoded object is returned with the error so the
// message can name it.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, k v1alpha1.Kind, ns, name string) (v1alpha1.Object, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			return nil, err
		}
		return nil, badRequest("read body: %v", err)
	}
	doc, err := reconcile(data, r.Header.Get("Content-Type"), k, ns, name)
	if err != nil {
		return nil, err
	}
	obj, err := v1alpha1.DecodeOne(doc)
	if err != nil {
		var fe *field.Error
		if errors.As(err, &fe) {
			return nil, &invalidError{errs: field.ErrorList{fe}}
		}
		var de *v1alpha1.DecodeError
		if errors.As(err, &de) {
			err = de.Err // the body is one document: its index says nothing
		}
		return nil, badRequest("decode %s: %v", k.Kind, err)
	}
	v1alpha1.Default(obj)
	errs := v1alpha1.Validate(obj)
	if obj.GetName() == "" && !hasField(errs, "metadata.name") {
		errs = append(errs, field.Required(field.NewPath("metadata", "name"), "name is required"))
	}
	if len(errs) > 0 {
		return obj, &invalidError{errs: errs}
	}
	return obj, nil
}

func hasField(errs field.ErrorList, path string) bool {
	for _, e := range errs {
		if e.Field == path {
			return true
		}
	}
	return false
}

// reconcile turns a JSON or YAML body into one JSON object whose apiVersion,
// kind, metadata.namespace and (for item paths) metadata.name agree with the
// path: missing ones are filled from it, different ones are refused.
func reconcile(data []byte, contentType string, k v1alpha1.Kind, ns, name string) ([]byte, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, badRequest("empty body: expected a %s as JSON or YAML", k.Kind)
	}
	mt, _, _ := mime.ParseMediaType(contentType)
	isJSON := mt == "application/json" || (mt != "application/yaml" && trimmed[0] == '{')
	if !isJSON {
		if yamlDocuments(data) > 1 {
			return nil, badRequest("body holds several YAML documents: send one object per request")
		}
		j, err := yaml.YAMLToJSONStrict(data)
		if err != nil {
			return nil, badRequest("decode YAML body: %v", err)
		}
		data = j
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // keep numbers exact for the strict typed decode
	if err := dec.Decode(&m); err != nil {
		return nil, badRequest("decode body: %v", err)
	}
	if dec.More() {
		return nil, badRequest("decode body: unexpected data after the object")
	}
	if m == nil {
		return nil, badRequest("decode body: expected a %s object", k.Kind)
	}
	if err := agree(m, "apiVersion", k.APIVersion(), "the path's group/version"); err != nil {
		return nil, err
	}
	if err := agree(m, "kind", k.Kind, "the path's resource "+k.Plural); err != nil {
		return nil, err
	}
	md, ok := m["metadata"].(map[string]any)
	switch {
	case m["metadata"] == nil:
		md = map[string]any{}
		m["metadata"] = md
	case !ok:
		return nil, badRequest("metadata must be an object")
	}
	if err := agree(md, "namespace", ns, "the path's namespace"); err != nil {
		return nil, err
	}
	if name != "" {
		if err := agree(md, "name", name, "the path's name"); err != nil {
			return nil, err
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil, badRequest("encode body: %v", err)
	}
	return out, nil
}

// agree checks that m[key], when set, equals want and sets it otherwise.
func agree(m map[string]any, key, want, what string) error {
	v, ok := m[key]
	if !ok || v == nil || v == "" {
		m[key] = want
		return nil
	}
	if s, ok := v.(string); !ok || s != want {
		path := key
		if key == "namespace" || key == "name" {
			path = "metadata." + key
		}
		return badRequest("%s %v does not match %s %q", path, fmt.Sprintf("%q", fmt.Sprint(v)), what, want)
	}
	return nil
}

// yamlDocuments counts the documents of a YAML stream that hold more than
// comments and blank lines.
func yamlDocuments(data []byte) int {
	docs, content := 0, false
	for line := range bytes.Lines(data) {
		t := bytes.TrimRight(line, " \t\r\n")
		if bytes.Equal(t, []byte("---")) || bytes.HasPrefix(t, []byte("--- ")) {
			if content {
				docs++
			}
			content = bytes.HasPrefix(t, []byte("--- ")) && len(bytes.TrimSpace(t[4:])) > 0
			continue
		}
		s := bytes.TrimSpace(t)
		if len(s) > 0 && s[0] != '#' {
			content = true
		}
	}
	if content {
		docs++
	}
	return docs
}
