package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"verge.dev/verge/internal/ca"
)

// requestError is a request refused with a status the handler chose.
type requestError struct {
	code   int
	reason metav1.StatusReason
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &requestError{code: http.StatusBadRequest, reason: metav1.StatusReasonBadRequest, msg: fmt.Sprintf(format, args...)}
}

// invalidError is a request body refused by validation; it lists every
// cause by its field.
type invalidError struct {
	what string
	errs field.ErrorList
}

func (e *invalidError) Error() string { return e.what + " is invalid: " + e.errs.ToAggregate().Error() }

// errBadClientCert is a renewal whose client certificate does not verify.
var errBadClientCert = errors.New("client certificate is not a valid svid of the trust domain")

// refusal is a refused certificate request: reason is the metric label.
type refusal struct {
	reason string
	err    error
}

func (e *refusal) Error() string { return e.err.Error() }
func (e *refusal) Unwrap() error { return e.err }

// refusalFor classifies an error met while serving a certificate request:
// the client's fault (a reason and a status code) or not (ok false, 500).
func refusalFor(err error) (reason string, code int, ok bool) {
	switch {
	case errors.Is(err, errCertRevoked):
		return ReasonRevokedCertificate, http.StatusForbidden, true
	case errors.Is(err, errBadClientCert):
		return ReasonInvalidCertificate, http.StatusUnauthorized, true
	case errors.Is(err, ca.ErrTokenInvalid):
		return ReasonInvalidToken, http.StatusUnauthorized, true
	case errors.Is(err, ca.ErrTokenExpired):
		return ReasonExpiredToken, http.StatusUnauthorized, true
	case errors.Is(err, ca.ErrTokenRevoked):
		return ReasonRevokedToken, http.StatusUnauthorized, true
	case errors.Is(err, ca.ErrTokenUsedUp):
		return ReasonUsedUpToken, http.StatusUnauthorized, true
	case errors.Is(err, ca.ErrIdentityMismatch):
		return ReasonIdentityMismatch, http.StatusForbidden, true
	case errors.Is(err, ca.ErrWrongTrustDomain):
		return ReasonWrongTrustDomain, http.StatusForbidden, true
	case errors.Is(err, ca.ErrCSRTooLarge):
		return ReasonTooLarge, http.StatusBadRequest, true
	case errors.Is(err, ca.ErrUnsupportedKey):
		return ReasonUnsupportedKey, http.StatusBadRequest, true
	case errors.Is(err, ca.ErrBadCSR):
		return ReasonBadCSR, http.StatusBadRequest, true
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return ReasonTooLarge, http.StatusRequestEntityTooLarge, true
	}
	if re, ok := errors.AsType[*requestError](err); ok && re.code == http.StatusBadRequest {
		return ReasonBadCSR, http.StatusBadRequest, true
	}
	return "", http.StatusInternalServerError, false
}

// toStatus is the package's one mapping from errors to HTTP status codes and
// Kubernetes-style Status bodies, the shape internal/apiserver answers with.
func toStatus(err error) metav1.Status {
	st := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
	}
	set := func(code int, reason metav1.StatusReason, msg string) metav1.Status {
		st.Code, st.Reason, st.Message = int32(code), reason, msg
		return st
	}
	if rf, ok := errors.AsType[*refusal](err); ok {
		_, code, _ := refusalFor(rf.err)
		switch code {
		case http.StatusUnauthorized:
			// One answer for every token problem, so the endpoint tells a
			// token thief nothing; the log has the reason.
			return set(code, metav1.StatusReasonUnauthorized,
				"a valid join token (Authorization: Bearer <token>) or, to renew, a valid client certificate is required")
		case http.StatusForbidden:
			return set(code, metav1.StatusReasonForbidden, rf.err.Error())
		case http.StatusRequestEntityTooLarge:
			return set(code, metav1.StatusReasonRequestEntityTooLarge, fmt.Sprintf("request body too large: limit is %d bytes", maxRequestBytes))
		default:
			return set(code, metav1.StatusReasonBadRequest, rf.err.Error())
		}
	}
	if ie, ok := errors.AsType[*invalidError](err); ok {
		causes := make([]string, 0, len(ie.errs))
		st.Details = &metav1.StatusDetails{}
		for _, fe := range ie.errs {
			causes = append(causes, fe.Error())
			st.Details.Causes = append(st.Details.Causes, metav1.StatusCause{
				Type:    metav1.CauseType(fe.Type),
				Message: fe.ErrorBody(),
				Field:   fe.Field,
			})
		}
		return set(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, ie.what+" is invalid: "+strings.Join(causes, "; "))
	}
	if re, ok := errors.AsType[*requestError](err); ok {
		return set(re.code, re.reason, re.msg)
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return set(http.StatusRequestEntityTooLarge, metav1.StatusReasonRequestEntityTooLarge,
			fmt.Sprintf("request body too large: limit is %d bytes", maxRequestBytes))
	}
	switch {
	case errors.Is(err, ca.ErrTokenNotFound):
		return set(http.StatusNotFound, metav1.StatusReasonNotFound, err.Error())
	case errors.Is(err, ca.ErrRotateOperatorCA):
		return set(http.StatusConflict, metav1.StatusReasonConflict,
			"the CA signs with an operator-supplied intermediate: rotate by restarting with a new --ca-cert and --ca-key")
	case errors.Is(err, ca.ErrBadTokenSpec):
		return set(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, err.Error())
	default:
		return set(http.StatusInternalServerError, metav1.StatusReasonInternalError, "internal error")
	}
}

// writeError answers with err's Status.
func writeError(w http.ResponseWriter, err error) {
	st := toStatus(err)
	writeJSON(w, int(st.Code), st)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
