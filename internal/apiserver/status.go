package apiserver

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"verge.dev/verge/api/v1alpha1"
	"verge.dev/verge/internal/store"
)

// target names the object a request is about, for error messages.
type target struct {
	kind v1alpha1.Kind
	name string
}

// requestError is an error whose HTTP status the handler decided itself
// (unknown resource, bad body, method not allowed).
type requestError struct {
	code   int
	reason metav1.StatusReason
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &requestError{code: http.StatusBadRequest, reason: metav1.StatusReasonBadRequest, msg: fmt.Sprintf(format, args...)}
}

// invalidError is a resource refused by validation; it lists every cause.
type invalidError struct {
	errs field.ErrorList
}

func (e *invalidError) Error() string { return e.errs.ToAggregate().Error() }

// toStatus is the one mapping from errors to HTTP status codes and
// Kubernetes-style Status bodies.
func toStatus(t target, err error) metav1.Status {
	st := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
	}
	if t.name != "" {
		st.Details = &metav1.StatusDetails{Name: t.name, Group: t.kind.Group, Kind: t.kind.Plural}
	}
	set := func(code int, reason metav1.StatusReason, msg string) metav1.Status {
		st.Code, st.Reason, st.Message = int32(code), reason, msg
		return st
	}
	res := fmt.Sprintf("%s %q", t.kind.Plural, t.name)
	var (
		reqErr *requestError
		invErr *invalidError
		maxErr *http.MaxBytesError
	)
	switch {
	case errors.As(err, &invErr):
		causes := make([]string, 0, len(invErr.errs))
		st.Details = &metav1.StatusDetails{Name: t.name, Group: t.kind.Group, Kind: t.kind.Kind}
		for _, fe := range invErr.errs {
			causes = append(causes, fe.Error())
			st.Details.Causes = append(st.Details.Causes, metav1.StatusCause{
				Type:    metav1.CauseType(fe.Type),
				Message: fe.ErrorBody(),
				Field:   fe.Field,
			})
		}
		return set(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid,
			fmt.Sprintf("%s %q is invalid: %s", t.kind.Kind, t.name, strings.Join(causes, "; ")))
	case errors.As(err, &reqErr):
		return set(reqErr.code, reqErr.reason, reqErr.msg)
	case errors.As(err, &maxErr):
		return set(http.StatusRequestEntityTooLarge, metav1.StatusReasonRequestEntityTooLarge,
			fmt.Sprintf("request body too large: limit is %d bytes", maxErr.Limit))
	case errors.Is(err, store.ErrNotFound):
		return set(http.StatusNotFound, metav1.StatusReasonNotFound, res+" not found")
	case errors.Is(err, store.ErrExists):
		return set(http.StatusConflict, metav1.StatusReasonAlreadyExists, res+" already exists")
	case errors.Is(err, store.ErrConflict):
		return set(http.StatusConflict, metav1.StatusReasonConflict,
			"operation cannot be fulfilled on "+res+": the object has been modified; apply your changes to the latest version and try again")
	case errors.Is(err, store.ErrCompacted):
		return set(http.StatusGone, metav1.StatusReasonExpired, "too old resource version: "+err.Error())
	default:
		return set(http.StatusInternalServerError, metav1.StatusReasonInternalError, "internal error")
	}
}
