package v1alpha1

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// DecodeError is an error in one document of a stream given to Decode.
type DecodeError struct {
	// Doc is the 1-based index of the document among the non-empty documents
	// of the stream (comment-only documents are not counted).
	Doc int
	// Line is the 1-based line of the stream where the document starts.
	Line int
	Err  error
}

func (e *DecodeError) Error() string { return fmt.Sprintf("document %d: %v", e.Doc, e.Err) }

func (e *DecodeError) Unwrap() error { return e.Err }

// Decode reads Kubernetes-style resources from data: YAML documents separated
// by "---" lines, a JSON object, a stream of JSON objects, or a JSON array.
// A document of kind List (apiVersion v1) contributes its items. Empty and
// comment-only documents are skipped.
//
// Decoding is strict, as the Kubernetes API server decodes: unknown fields,
// duplicate fields and fields whose case differs from the schema are errors.
// Decode stops at the first bad document and returns a *DecodeError naming
// it; it returns objects only when every document decoded. The objects are
// neither defaulted nor validated.
func Decode(data []byte) ([]Object, error) {
	docs := splitDocuments(data)
	var objs []Object
	n := 0
	for _, d := range docs {
		if d.err != nil {
			return nil, &DecodeError{Doc: n + 1, Line: d.line, Err: d.err}
		}
		j := d.json
		if !d.isJSON {
			var err error
			j, err = yaml.YAMLToJSONStrict(d.data)
			if err != nil {
				return nil, &DecodeError{Doc: n + 1, Line: d.line, Err: shiftYAMLLine(err, d.line)}
			}
		}
		if isNull(j) {
			continue
		}
		n++
		got, err := decodeDocument(j)
		if err != nil {
			return nil, &DecodeError{Doc: n, Line: d.line, Err: err}
		}
		objs = append(objs, got...)
	}
	return objs, nil
}

// DecodeOne decodes data that must hold exactly one object, as the body of
// an API request does.
func DecodeOne(data []byte) (Object, error) {
	objs, err := Decode(data)
	if err != nil {
		return nil, err
	}
	if len(objs) != 1 {
		return nil, fmt.Errorf("decode object: got %d objects, want 1", len(objs))
	}
	return objs[0], nil
}

// KindOf returns the kind of obj, from its Go type (so that objects built in
// code without TypeMeta are recognised too).
func KindOf(obj Object) (Kind, bool) {
	var name string
	switch obj.(type) {
	case *Service:
		name = "Service"
	case *Workload:
		name = "Workload"
	case *HTTPRoute:
		name = "HTTPRoute"
	case *GRPCRoute:
		name = "GRPCRoute"
	case *DestinationPolicy:
		name = "DestinationPolicy"
	case *FaultInjection:
		name = "FaultInjection"
	case *MeshTLS:
		name = "MeshTLS"
	case *AuthorizationPolicy:
		name = "AuthorizationPolicy"
	case *Telemetry:
		name = "Telemetry"
	default:
		return Kind{}, false
	}
	for _, k := range Kinds {
		if k.Kind == name {
			return k, true
		}
	}
	return Kind{}, false
}

// document is one document of a stream, as text (YAML) or as JSON.
type document struct {
	line   int
	data   []byte
	json   []byte
	isJSON bool
	// err is a problem found while splitting, reported when Decode reaches
	// the document.
	err error
}

func splitDocuments(data []byte) []document {
	if docs, ok := splitJSON(data); ok {
		return docs
	}
	return splitYAML(data)
}

// splitJSON reads data as a JSON array or a stream of JSON values. It reports
// false when data is not JSON, and the caller then reads it as YAML (which
// also reports the syntax error, with a line number).
func splitJSON(data []byte) ([]document, bool) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || (trimmed[0] != '{' && trimmed[0] != '[') {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var docs []document
	for {
		start := dec.InputOffset()
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, false
		}
		line := 1 + bytes.Count(data[:start], []byte("\n"))
		if raw[0] == '[' {
			var items []json.RawMessage
			if err := json.Unmarshal(raw, &items); err != nil {
				return nil, false
			}
			for _, it := range items {
				docs = append(docs, document{line: line, json: it, isJSON: true})
			}
			continue
		}
		docs = append(docs, document{line: line, json: raw, isJSON: true})
	}
	return docs, true
}

// splitYAML cuts data at "---" (and "...") lines. It does the cutting itself
// rather than letting the YAML parser see several documents because the
// parser silently reads only the first one.
func splitYAML(data []byte) []document {
	var docs []document
	var pending error
	start, startLine := 0, 1
	line := 1
	for off := 0; off < len(data); line++ {
		end := bytes.IndexByte(data[off:], '\n')
		next := len(data)
		if end >= 0 {
			next = off + end + 1
		}
		text := strings.TrimRight(string(data[off:next]), "\r\n")
		if rest, ok := separator(text); ok {
			docs = append(docs, document{line: startLine, data: data[start:off], err: pending})
			pending = nil
			if r := strings.TrimSpace(rest); r != "" && !strings.HasPrefix(r, "#") {
				pending = fmt.Errorf("yaml: line %d: content after a document separator is not supported", line)
			}
			start, startLine = next, line+1
		}
		off = next
	}
	return append(docs, document{line: startLine, data: data[start:], err: pending})
}

// separator reports whether a line separates YAML documents, and what follows
// the marker on it.
func separator(line string) (string, bool) {
	for _, m := range []string{"---", "..."} {
		if rest, ok := strings.CutPrefix(line, m); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			return rest, true
		}
	}
	return "", false
}

var yamlLine = regexp.MustCompile(`\bline (\d+)\b`)

// shiftYAMLLine makes the parser's line numbers, counted from the start of
// the document, count from the start of the stream.
func shiftYAMLLine(err error, docLine int) error {
	msg := err.Error()
	if !strings.HasPrefix(msg, "yaml: ") || docLine == 1 {
		return err
	}
	return errors.New(yamlLine.ReplaceAllStringFunc(msg, func(m string) string {
		l, convErr := strconv.Atoi(strings.TrimPrefix(m, "line "))
		if convErr != nil {
			return m
		}
		return "line " + strconv.Itoa(l+docLine-1)
	}))
}

func isNull(j []byte) bool {
	j = bytes.TrimSpace(j)
	return len(j) == 0 || string(j) == "null"
}

// decodeDocument decodes one non-empty JSON document: an object of a known
// kind, or a List of them.
func decodeDocument(j []byte) ([]Object, error) {
	j = bytes.TrimSpace(j)
	if j[0] != '{' {
		return nil, errors.New("not an object")
	}
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	// Case-sensitive, as the strict decode below is: "Kind:" is not "kind:".
	if err := kjson.UnmarshalCaseSensitivePreserveInts(j, &tm); err != nil {
		return nil, decodeJSONError(err)
	}
	switch {
	case tm.APIVersion == "":
		return nil, errors.New("apiVersion: required")
	case tm.Kind == "":
		return nil, errors.New("kind: required")
	case tm.APIVersion == "v1" && tm.Kind == "List":
		return decodeList(j)
	}
	k, ok := KindFor(tm.APIVersion, tm.Kind)
	if !ok {
		return nil, fmt.Errorf("unknown kind %q in apiVersion %q", tm.Kind, tm.APIVersion)
	}
	obj := k.New()
	strict, err := kjson.UnmarshalStrict(j, obj)
	if err != nil {
		return nil, decodeJSONError(err)
	}
	if len(strict) > 0 {
		errs := make([]error, len(strict))
		for i, e := range strict {
			errs[i] = strictError(e)
		}
		return nil, errors.Join(errs...)
	}
	return []Object{obj}, nil
}

func decodeList(j []byte) ([]Object, error) {
	var list struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   json.RawMessage   `json:"metadata,omitempty"`
		Items      []json.RawMessage `json:"items"`
	}
	strict, err := kjson.UnmarshalStrict(j, &list)
	if err != nil {
		return nil, decodeJSONError(err)
	}
	if len(strict) > 0 {
		return nil, strictError(strict[0])
	}
	var objs []Object
	for i, it := range list.Items {
		if isNull(it) {
			return nil, fmt.Errorf("items[%d]: not an object", i)
		}
		got, err := decodeDocument(it)
		if err != nil {
			return nil, fmt.Errorf("items[%d]: %w", i, err)
		}
		objs = append(objs, got...)
	}
	return objs, nil
}

// strictError rephrases the JSON decoder's `unknown field "spec.ports[0].prot"`
// as `spec.ports[0]: unknown field "prot"`, the shape of validation errors.
func strictError(err error) error {
	var fe kjson.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	p := fe.FieldPath()
	what := strings.TrimSuffix(err.Error(), " "+strconv.Quote(p))
	if what == err.Error() {
		return err
	}
	i := strings.LastIndexByte(p, '.')
	if i < 0 {
		return fmt.Errorf("%s %q", what, p)
	}
	hint := ""
	if name := p[i+1:]; name == "true" || name == "false" {
		// YAML 1.1 reads the bare keys on, off, yes, no, y and n as
		// booleans, and a retry policy's "on" is such a key.
		hint = ` (a bare YAML key such as on or yes reads as a boolean: quote it, "on":)`
	}
	return fmt.Errorf("%s: %s %q%s", p[:i], what, p[i+1:], hint)
}

var typeError = regexp.MustCompile(`^json: cannot unmarshal (.+) into Go struct field [A-Za-z0-9_]+\.(\S+) of type (\S+)$`)

// decodeJSONError drops the Go struct names from the decoder's type errors:
// `spec.ports.port: cannot unmarshal string into int32`.
func decodeJSONError(err error) error {
	m := typeError.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	hint := ""
	if m[3] == "string" && (m[1] == "bool" || strings.HasPrefix(m[1], "number")) {
		// YAML 1.1 reads unquoted y, yes, on, 1.0 as bool or number.
		hint = " (quote the value)"
	}
	return fmt.Errorf("%s: cannot unmarshal %s into %s%s", m[2], m[1], m[3], hint)
}
