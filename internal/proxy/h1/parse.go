package h1

import (
	"bufio"
	"bytes"
	"errors"
)

// statusError is a malformed or unsupported message; status is the reply
// a server owes the client for it (RFC 9112). The values are preallocated so
// that refusing bad input does not allocate.
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return e.msg }

var (
	errRequestLine     = &statusError{400, "h1: malformed request line"}
	errVersion         = &statusError{505, "h1: unsupported HTTP version"}
	errTarget          = &statusError{400, "h1: malformed request target"}
	errField           = &statusError{400, "h1: malformed header field"}
	errObsFold         = &statusError{400, "h1: obsolete line folding"}
	errContentLength   = &statusError{400, "h1: invalid content-length"}
	errConflictLength  = &statusError{400, "h1: conflicting content-length"}
	errLengthAndChunk  = &statusError{400, "h1: both transfer-encoding and content-length"}
	errTransferCoding  = &statusError{501, "h1: unsupported transfer-encoding"}
	errChunkedTwice    = &statusError{400, "h1: transfer-encoding chunked applied twice"}
	errCodingInHTTP10  = &statusError{400, "h1: transfer-encoding in HTTP/1.0 request"}
	errMissingHost     = &statusError{400, "h1: missing host header"}
	errMultipleHost    = &statusError{400, "h1: multiple host headers"}
	errHeadTooLarge    = &statusError{431, "h1: header section too large"}
	errTooManyFields   = &statusError{431, "h1: too many header fields"}
	errLeadingLines    = &statusError{400, "h1: too many empty lines before request"}
	errUnterminated    = &statusError{400, "h1: unterminated header section"}
	errStatusLine      = &statusError{502, "h1: malformed status line"}
	errRespCoding      = &statusError{502, "h1: unsupported response transfer-encoding"}
	errChunkedEncoding = &statusError{400, "h1: malformed chunked encoding"}
	errTrailerTooLarge = &statusError{400, "h1: trailer section too large"}
)

// maxFields bounds the number of header fields in one head, so that a head
// of tiny lines cannot grow the field slice without limit.
const maxFields = 512

// fieldKind names the header fields the proxy must act on; everything else
// is kindOther and forwarded untouched.
type fieldKind uint8

const (
	kindOther fieldKind = iota
	kindHost
	kindContentLength
	kindTransferEncoding
	kindConnection
	kindKeepAlive
	kindProxyConnection
	kindTE
	kindUpgrade
	kindExpect
	kindXForwardedFor
)

// field is one header field line. name and value alias the head buffer.
type field struct {
	name, value []byte
	kind        fieldKind
	// hop is set when a Connection header nominates this field as
	// hop-by-hop (RFC 9110 7.6.1).
	hop bool
}

// reqHead is a parsed request head. Its slices alias the buffer it was
// parsed from and are valid until that buffer is reused.
type reqHead struct {
	method []byte
	// target is the request-target as sent.
	target []byte
	// origin is the target to send upstream in origin-form; slash means a
	// "/" must precede it (absolute-form with an empty path).
	origin []byte
	slash  bool
	path   []byte
	host   []byte
	minor  int // HTTP/1.minor
	fields []field

	contentLength  int64 // -1 when absent
	chunked        bool
	hasHost        bool
	absolute       bool
	close          bool // the client does not want the connection kept
	expectContinue bool
	upgrade        bool // an Upgrade header field is present
	teTrailers     bool // TE names "trailers"
}

func (h *reqHead) hasBody() bool { return h.chunked || h.contentLength > 0 }

// respHead is a parsed response head, aliasing its buffer like reqHead.
type respHead struct {
	minor  int
	status int
	// statusRest is the status line after the version: "200 OK".
	statusRest    []byte
	fields        []field
	contentLength int64 // -1 when absent
	chunked       bool
	close         bool
}

// readHead appends one header section (start line, fields, empty line) read
// from br to buf. Lines may end in CRLF or a bare LF, as net/http accepts.
// Empty lines before the start line are skipped (RFC 9112 2.2) when
// skipEmpty is set. A head longer than max is errHeadTooLarge. On error the
// bytes read so far are returned, so a caller can tell a clean end (none)
// from a truncated head.
func readHead(br *bufio.Reader, buf []byte, max int, skipEmpty bool) ([]byte, error) {
	start := len(buf)
	lineStart := start
	empties := 0
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)-start+len(frag) > max {
			return buf, errHeadTooLarge
		}
		buf = append(buf, frag...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return buf, err
		}
		line := buf[lineStart:]
		if len(line) == 1 || (len(line) == 2 && line[0] == '\r') {
			if lineStart == start {
				if !skipEmpty {
					return buf, errStatusLine
				}
				if empties++; empties > 8 {
					return buf, errLeadingLines
				}
				buf = buf[:start]
				continue
			}
			return buf, nil
		}
		lineStart = len(buf)
	}
}

// nextLine splits the first line off b, dropping its CRLF or LF. ok is false
// when b holds no complete line.
func nextLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, b, false
	}
	line, rest = b[:i], b[i+1:]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, rest, true
}

// parseRequestHead parses a complete request head (as readHead returns it,
// ending with the empty line and nothing after) into h, reusing h's field
// slice.
func parseRequestHead(buf []byte, h *reqHead) error {
	*h = reqHead{fields: h.fields[:0], contentLength: -1}
	line, rest, ok := nextLine(buf)
	if !ok {
		return errUnterminated
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return errRequestLine
	}
	h.method = line[:sp1]
	if !isToken(h.method) {
		return errRequestLine
	}
	line = line[sp1+1:]
	sp2 := bytes.IndexByte(line, ' ')
	if sp2 <= 0 {
		return errRequestLine
	}
	h.target = line[:sp2]
	minor, err := parseVersion(line[sp2+1:])
	if err != nil {
		return err
	}
	h.minor = minor
	if err := h.parseTarget(); err != nil {
		return err
	}

	var hasConnTokens bool
	h.fields, err = parseFields(rest, h.fields)
	if err != nil {
		return err
	}
	for i := range h.fields {
		f := &h.fields[i]
		switch f.kind {
		case kindHost:
			if h.hasHost {
				return errMultipleHost
			}
			h.hasHost = true
			if !h.absolute {
				h.host = f.value
			}
		case kindContentLength:
			n, ok := parseContentLength(f.value)
			if !ok {
				return errContentLength
			}
			if h.contentLength >= 0 && h.contentLength != n {
				return errConflictLength
			}
			h.contentLength = n
		case kindTransferEncoding:
			if h.chunked {
				return errChunkedTwice
			}
			if !equalFold(f.value, "chunked") {
				if hasToken(f.value, "chunked") {
					return errChunkedTwice
				}
				return errTransferCoding
			}
			h.chunked = true
		case kindConnection:
			for tok := range tokens(f.value) {
				switch {
				case equalFold(tok, "close"):
					h.close = true
				case equalFold(tok, "keep-alive"), equalFold(tok, "upgrade"):
				default:
					hasConnTokens = true
				}
			}
		case kindTE:
			if hasToken(f.value, "trailers") {
				h.teTrailers = true
			}
		case kindUpgrade:
			h.upgrade = true
		case kindExpect:
			if equalFold(f.value, "100-continue") {
				h.expectContinue = h.minor >= 1
			}
		}
	}
	if h.chunked && h.contentLength >= 0 {
		return errLengthAndChunk
	}
	if h.chunked && h.minor == 0 {
		return errCodingInHTTP10
	}
	if h.minor >= 1 && !h.hasHost {
		return errMissingHost
	}
	if h.minor == 0 {
		// Keep-alive for HTTP/1.0 is an extension we do not offer: one
		// request per connection keeps the 1.0 path simple and correct.
		h.close = true
	}
	if hasConnTokens {
		markNominated(h.fields)
	}
	return nil
}

// parseTarget classifies h.target (RFC 9112 3.2) and sets origin, path and,
// for absolute-form, host.
func (h *reqHead) parseTarget() error {
	t := h.target
	for _, c := range t {
		if c <= ' ' || c == 0x7f {
			return errTarget
		}
	}
	switch {
	case t[0] == '/':
		h.origin = t
	case string(h.method) == "CONNECT":
		// authority-form; never forwarded by this package.
		h.origin = t
		h.host = t
		return nil
	case len(t) == 1 && t[0] == '*':
		if string(h.method) != "OPTIONS" {
			return errTarget
		}
		h.origin = t
		h.path = t
		return nil
	default:
		var rest []byte
		switch {
		case hasPrefixFold(t, "http://"):
			rest = t[len("http://"):]
		case hasPrefixFold(t, "https://"):
			rest = t[len("https://"):]
		default:
			return errTarget
		}
		i := bytes.IndexAny(rest, "/?")
		if i < 0 {
			i = len(rest)
		}
		if i == 0 || bytes.IndexByte(rest[:i], '@') >= 0 || bytes.IndexByte(rest, '#') >= 0 {
			return errTarget
		}
		h.absolute = true
		h.host = rest[:i]
		h.origin = rest[i:]
		h.slash = len(h.origin) == 0 || h.origin[0] == '?'
	}
	h.path = h.origin
	if q := bytes.IndexByte(h.path, '?'); q >= 0 {
		h.path = h.path[:q]
	}
	if h.slash {
		h.path = slashPath
	}
	return nil
}

var slashPath = []byte("/")

// parseVersion accepts "HTTP/1.x" and returns x; any other major version is
// errVersion, anything that is not a version at all errRequestLine.
func parseVersion(v []byte) (int, error) {
	if len(v) != 8 || string(v[:5]) != "HTTP/" || v[6] != '.' || !isDigit(v[5]) || !isDigit(v[7]) {
		return 0, errRequestLine
	}
	if v[5] != '1' {
		return 0, errVersion
	}
	return int(v[7] - '0'), nil
}

// parseResponseHead parses a complete response head into h.
func parseResponseHead(buf []byte, h *respHead) error {
	*h = respHead{fields: h.fields[:0], contentLength: -1}
	line, rest, ok := nextLine(buf)
	if !ok || len(line) < 12 || line[8] != ' ' {
		return errStatusLine
	}
	minor, err := parseVersion(line[:8])
	if err != nil {
		return errStatusLine
	}
	h.minor = minor
	code := line[9:12]
	if !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) || (len(line) > 12 && line[12] != ' ') {
		return errStatusLine
	}
	h.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if h.status < 100 {
		return errStatusLine
	}
	h.statusRest = line[9:]
	for _, c := range h.statusRest {
		if c < ' ' && c != '\t' || c == 0x7f {
			return errStatusLine
		}
	}
	h.fields, err = parseFields(rest, h.fields)
	if err != nil {
		return errStatusLine
	}
	keepAlive := false
	hasConnTokens := false
	for i := range h.fields {
		f := &h.fields[i]
		switch f.kind {
		case kindContentLength:
			n, ok := parseContentLength(f.value)
			if !ok || (h.contentLength >= 0 && h.contentLength != n) {
				return errStatusLine
			}
			h.contentLength = n
		case kindTransferEncoding:
			if h.chunked || !equalFold(f.value, "chunked") {
				return errRespCoding
			}
			h.chunked = true
		case kindConnection:
			for tok := range tokens(f.value) {
				switch {
				case equalFold(tok, "close"):
					h.close = true
				case equalFold(tok, "keep-alive"):
					keepAlive = true
				case equalFold(tok, "upgrade"):
				default:
					hasConnTokens = true
				}
			}
		}
	}
	if h.chunked && h.contentLength >= 0 {
		// Chunked wins (RFC 9112 6.3), but such a sender may be confused
		// about framing: do not reuse its connection.
		h.contentLength = -1
		h.close = true
	}
	if h.minor == 0 && !keepAlive {
		h.close = true
	}
	if hasConnTokens {
		markNominated(h.fields)
	}
	return nil
}

// parseFields parses field lines up to and including the empty line that
// ends the section; the empty line must be the end of b.
func parseFields(b []byte, fields []field) ([]field, error) {
	for {
		line, rest, ok := nextLine(b)
		if !ok {
			return fields, errUnterminated
		}
		b = rest
		if len(line) == 0 {
			if len(b) != 0 {
				return fields, errUnterminated
			}
			return fields, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return fields, errObsFold
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return fields, errField
		}
		name := line[:colon]
		if !isToken(name) {
			return fields, errField
		}
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if c < ' ' && c != '\t' || c == 0x7f {
				return fields, errField
			}
		}
		if len(fields) == maxFields {
			return fields, errTooManyFields
		}
		fields = append(fields, field{name: name, value: value, kind: classify(name)})
	}
}

// markNominated sets hop on every ordinary field that a Connection header
// names. Fields the proxy frames or routes on itself are never dropped this
// way, so "Connection: content-length" cannot change how a body is framed.
func markNominated(fields []field) {
	for i := range fields {
		if fields[i].kind != kindConnection {
			continue
		}
		for tok := range tokens(fields[i].value) {
			for j := range fields {
				if fields[j].kind == kindOther && bytes.EqualFold(fields[j].name, tok) {
					fields[j].hop = true
				}
			}
		}
	}
}

// classify maps a field name to its kind without allocating.
func classify(name []byte) fieldKind {
	switch len(name) {
	case 2:
		if equalFold(name, "te") {
			return kindTE
		}
	case 4:
		if equalFold(name, "host") {
			return kindHost
		}
	case 6:
		if equalFold(name, "expect") {
			return kindExpect
		}
	case 7:
		if equalFold(name, "upgrade") {
			return kindUpgrade
		}
	case 10:
		if equalFold(name, "connection") {
			return kindConnection
		}
		if equalFold(name, "keep-alive") {
			return kindKeepAlive
		}
	case 14:
		if equalFold(name, "content-length") {
			return kindContentLength
		}
	case 15:
		if equalFold(name, "x-forwarded-for") {
			return kindXForwardedFor
		}
	case 16:
		if equalFold(name, "proxy-connection") {
			return kindProxyConnection
		}
	case 17:
		if equalFold(name, "transfer-encoding") {
			return kindTransferEncoding
		}
	}
	return kindOther
}

// parseContentLength accepts 1*DIGIT up to 18 digits (no sign, no list).
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// tokens yields the non-empty elements of a comma-separated list, trimmed.
func tokens(v []byte) func(yield func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(v) > 0 {
			var tok []byte
			if i := bytes.IndexByte(v, ','); i >= 0 {
				tok, v = v[:i], v[i+1:]
			} else {
				tok, v = v, nil
			}
			// Parameters (";q=0") do not change which token is named.
			if i := bytes.IndexByte(tok, ';'); i >= 0 {
				tok = tok[:i]
			}
			if tok = trimOWS(tok); len(tok) > 0 && !yield(tok) {
				return
			}
		}
	}
}

func hasToken(v []byte, tok string) bool {
	for t := range tokens(v) {
		if equalFold(t, tok) {
			return true
		}
	}
	return false
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold reports whether b equals the lower-case ASCII string s,
// ignoring ASCII case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		d := s[i]
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && equalFold(b[:len(prefix)], prefix)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isToken reports whether b is a non-empty RFC 9110 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// errorStatus is the status a client gets for a head that failed to parse.
func errorStatus(err error) int {
	if se, ok := errors.AsType[*statusError](err); ok {
		return se.status
	}
	return 400
}
