package apiclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// StatusError is a request the API refused, as its Status body describes it.
// Test for it with errors.As, or with IsNotFound and its siblings.
type StatusError struct {
	// Code is the HTTP status code.
	Code int
	// Reason is the Status reason: NotFound, AlreadyExists, Conflict,
	// Invalid, BadRequest, Expired, RequestEntityTooLarge, InternalError…
	Reason string
	// Message is the server's one-line description.
	Message string
	// Kind and Name are the object the error is about, when the server said.
	Kind, Name string
	// Causes lists every refused field of an Invalid object.
	Causes []Cause
}

// Cause is one refused field.
type Cause struct {
	// Field is the path from the document root: spec.ports[0].port.
	Field string
	// Reason is the kind of failure: FieldValueInvalid, FieldValueRequired…
	Reason string
	// Message is the failure without the field: "Invalid value: 0: must be
	// between 1 and 65535".
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// statusError builds the error for a non-2xx response from its body, which
// is a Status when the API server wrote it and anything else otherwise.
func statusError(code int, body []byte) *StatusError {
	var st metav1.Status
	if err := json.Unmarshal(body, &st); err == nil && st.Kind == "Status" {
		e := &StatusError{Code: code, Reason: string(st.Reason), Message: st.Message}
		if st.Details != nil {
			e.Kind, e.Name = st.Details.Kind, st.Details.Name
			for _, c := range st.Details.Causes {
				e.Causes = append(e.Causes, Cause{Field: c.Field, Reason: string(c.Type), Message: c.Message})
			}
		}
		if e.Message == "" {
			e.Message = http.StatusText(code)
		}
		return e
	}
	msg := strings.TrimSpace(string(body))
	if msg == "" {
		msg = http.StatusText(code)
	}
	if len(msg) > 512 {
		msg = msg[:512] + "…"
	}
	return &StatusError{Code: code, Reason: strings.ReplaceAll(http.StatusText(code), " ", ""),
		Message: fmt.Sprintf("server answered %d: %s", code, msg)}
}

func hasStatus(err error, code int, reason string) bool {
	var se *StatusError
	if !errors.As(err, &se) {
		return false
	}
	if se.Reason != "" {
		return se.Reason == reason
	}
	return se.Code == code
}

// IsNotFound reports whether err says the object does not exist.
func IsNotFound(err error) bool {
	return hasStatus(err, http.StatusNotFound, string(metav1.StatusReasonNotFound))
}

// IsAlreadyExists reports whether err says a create found the object there.
func IsAlreadyExists(err error) bool {
	return hasStatus(err, http.StatusConflict, string(metav1.StatusReasonAlreadyExists))
}

// IsConflict reports whether err says the object's resourceVersion was stale.
func IsConflict(err error) bool {
	return hasStatus(err, http.StatusConflict, string(metav1.StatusReasonConflict))
}

// IsInvalid reports whether err says the object failed validation.
func IsInvalid(err error) bool {
	return hasStatus(err, http.StatusUnprocessableEntity, string(metav1.StatusReasonInvalid))
}

// IsExpired reports whether err says a watch's resourceVersion is too old:
// list again and watch from there.
func IsExpired(err error) bool {
	return hasStatus(err, http.StatusGone, string(metav1.StatusReasonExpired))
}

// IsUnauthorized reports whether err says the request carried no valid
// credentials (401): no token, a wrong one, or a bad client certificate.
func IsUnauthorized(err error) bool {
	return hasStatus(err, http.StatusUnauthorized, string(metav1.StatusReasonUnauthorized))
}

// IsForbidden reports whether err says the caller's identity may not do
// what it asked (403).
func IsForbidden(err error) bool {
	return hasStatus(err, http.StatusForbidden, string(metav1.StatusReasonForbidden))
}
