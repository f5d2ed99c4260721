package authz

import (
	"net/netip"
	"regexp"
	"strings"
)

// node is a compiled permission or principal. It is a tagged struct rather
// than an interface so that matching a request is one switch per node and
// the decision's state stays on the stack.
type node struct {
	kind nodeKind
	kids []node // and, or, not (one)
	str  strMatch
	// name is the header name (lower case) or the JWT claim.
	name string
	// port, or the range [port, portEnd).
	port, portEnd uint32
	prefix        netip.Prefix
	// invert flips a header match (Envoy's invert_match).
	invert bool
	// list matches a claim whose value is a list (Envoy's list_match).
	list bool
}

type nodeKind uint8

const (
	nodeAny nodeKind = iota
	nodeNone
	nodeAnd
	nodeOr
	nodeNot
	nodePort
	nodePortRange
	nodePath
	nodeHeader        // str against the header's first value
	nodeHeaderPresent // the header is present (non-empty)
	nodePrincipal     // str against the peer's SPIFFE ID; zero str: authenticated
	nodeSourceIP
	nodeClaim        // str against a string claim, or an element of a list claim
	nodeClaimPresent // the claim exists
)

// isHTTP reports whether the node reads anything only HTTP requests have.
func (n *node) isHTTP() bool {
	switch n.kind {
	case nodePath, nodeHeader, nodeHeaderPresent, nodeClaim, nodeClaimPresent:
		return true
	}
	for i := range n.kids {
		if n.kids[i].isHTTP() {
			return true
		}
	}
	return false
}

func (n *node) match(c *evalCtx) bool {
	switch n.kind {
	case nodeAny:
		return true
	case nodeNone:
		return false
	case nodeAnd:
		for i := range n.kids {
			if !n.kids[i].match(c) {
				return false
			}
		}
		return true
	case nodeOr:
		for i := range n.kids {
			if n.kids[i].match(c) {
				return true
			}
		}
		return false
	case nodeNot:
		return !n.kids[0].match(c)
	case nodePort:
		return c.r.DestPort == n.port
	case nodePortRange:
		return c.r.DestPort >= n.port && c.r.DestPort < n.portEnd
	case nodePath:
		return c.r.HTTP && n.str.match(c.r.Path)
	case nodeHeader:
		if !c.r.HTTP {
			return false
		}
		v := c.r.header(n.name)
		// Envoy: an absent header never matches, inverted or not.
		if v == "" {
			return false
		}
		return n.str.match(v) != n.invert
	case nodeHeaderPresent:
		return c.r.HTTP && (c.r.header(n.name) != "") != n.invert
	case nodePrincipal:
		if c.r.Principal == "" {
			return false
		}
		return n.str.kind == strAny || n.str.match(c.r.Principal)
	case nodeSourceIP:
		return c.r.SourceIP.IsValid() && n.prefix.Contains(c.r.SourceIP.Unmap())
	case nodeClaim:
		v, ok := c.claims[n.name]
		if !ok {
			return false
		}
		if !n.list {
			s, ok := v.(string)
			return ok && n.str.match(s)
		}
		l, ok := v.([]any)
		if !ok {
			return false
		}
		for _, e := range l {
			if s, ok := e.(string); ok && n.str.match(s) {
				return true
			}
		}
		return false
	case nodeClaimPresent:
		_, ok := c.claims[n.name]
		return ok
	}
	return false
}

// strMatch is Envoy's StringMatcher.
type strMatch struct {
	kind       strKind
	value      string
	ignoreCase bool
	re         *regexp.Regexp
}

type strKind uint8

const (
	strAny strKind = iota
	strExact
	strPrefix
	strSuffix
	strContains
	strRegex
)

func (m *strMatch) match(s string) bool {
	switch m.kind {
	case strAny:
		return true
	case strExact:
		if m.ignoreCase {
			return strings.EqualFold(s, m.value)
		}
		return s == m.value
	case strPrefix:
		if len(s) < len(m.value) {
			return false
		}
		if m.ignoreCase {
			return strings.EqualFold(s[:len(m.value)], m.value)
		}
		return s[:len(m.value)] == m.value
	case strSuffix:
		if len(s) < len(m.value) {
			return false
		}
		tail := s[len(s)-len(m.value):]
		if m.ignoreCase {
			return strings.EqualFold(tail, m.value)
		}
		return tail == m.value
	case strContains:
		if !m.ignoreCase {
			return strings.Contains(s, m.value)
		}
		for i := 0; i+len(m.value) <= len(s); i++ {
			if strings.EqualFold(s[i:i+len(m.value)], m.value) {
				return true
			}
		}
		return false
	case strRegex:
		return m.re.MatchString(s)
	}
	return false
}
