package observe

import (
	"encoding/binary"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Access log fields. Names follow Envoy's and Istio's JSON access logs
// where they have one, so that existing log pipelines map them unchanged.
//
// appendRequestLine and appendConnLine append one line (with its newline)
// to b without allocating once b has grown to a line's size.
func appendRequestLine(b []byte, r *Request) []byte {
	e := r.Edge
	b = appendCommon(b, r.Start, r.Duration, e)
	b = appendStringField(b, `,"method":`, r.Method)
	b = appendStringField(b, `,"authority":`, r.Authority)
	b = appendStringField(b, `,"path":`, r.Path)
	b = appendIntField(b, `,"status":`, int64(r.Status))
	b = appendStringField(b, `,"grpc_status":`, grpcName(r.GRPCStatus))
	b = appendIntField(b, `,"bytes_received":`, r.BytesIn)
	b = appendIntField(b, `,"bytes_sent":`, r.BytesOut)
	b = appendPeers(b, e)
	b = appendStringField(b, `,"upstream_host":`, r.Upstream)
	b = appendStringField(b, `,"route":`, e.Route)
	b = appendIntField(b, `,"retries":`, int64(r.Retries))
	b = appendStringField(b, `,"response_flags":`, r.Flags)
	b = appendStringField(b, `,"trace_id":`, r.TraceID)
	b = appendStringField(b, `,"span_id":`, r.SpanID)
	b = appendStringField(b, `,"request_id":`, r.RequestID)
	b = appendStringField(b, `,"user_agent":`, r.UserAgent)
	return append(b, "}\n"...)
}

func appendConnLine(b []byte, c *Conn) []byte {
	e := c.Edge
	b = appendCommon(b, c.Start, c.Duration, e)
	b = appendIntField(b, `,"bytes_received":`, c.BytesIn)
	b = appendIntField(b, `,"bytes_sent":`, c.BytesOut)
	b = appendPeers(b, e)
	b = appendStringField(b, `,"upstream_host":`, c.Upstream)
	b = appendStringField(b, `,"route":`, e.Route)
	flags := c.Flags
	if c.Failed && flags == "" {
		// Envoy's flag for "no upstream connection could be made",
		// which is what Failed means.
		flags = "UF"
	}
	b = appendStringField(b, `,"response_flags":`, flags)
	return append(b, "}\n"...)
}

// appendCommon opens the object with the fields every line has.
func appendCommon(b []byte, start time.Time, d time.Duration, e *Edge) []byte {
	b = append(b, `{"start_time":"`...)
	b = appendRFC3339Nano(b, start)
	b = append(b, `","duration_ms":`...)
	b = appendMillis(b, d)
	b = appendStringField(b, `,"direction":`, e.Direction)
	return appendStringField(b, `,"protocol":`, e.Protocol)
}

// secondPrefix is the "2006-01-02T15:04:05" of one second, UTC.
type secondPrefix struct {
	sec int64
	b   [19]byte
}

// lastSecond caches the prefix of the second last formatted: every line
// of a busy proxy falls in the same second as the one before, and the
// calendar arithmetic of time.AppendFormat is most of a line's formatting.
var lastSecond atomic.Pointer[secondPrefix]

// appendRFC3339Nano appends t in UTC as time.RFC3339Nano does (trailing
// zeros of the fraction dropped), reusing the cached second.
func appendRFC3339Nano(b []byte, t time.Time) []byte {
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	sec := t.Unix()
	p := lastSecond.Load()
	if p == nil || p.sec != sec {
		p = &secondPrefix{sec: sec}
		t.AppendFormat(p.b[:0], "2006-01-02T15:04:05")
		lastSecond.Store(p)
	}
	b = append(b, p.b[:]...)
	if ns := t.Nanosecond(); ns != 0 {
		var f [10]byte
		f[0] = '.'
		for i := 9; i >= 1; i-- {
			f[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := len(f)
		for f[n-1] == '0' {
			n--
		}
		b = append(b, f[:n]...)
	}
	return append(b, 'Z')
}

// appendMillis appends d in milliseconds with microsecond resolution
// ("12.345"): strconv's shortest float formatting costs several times more
// and resolves nanoseconds nobody reads in an access log.
func appendMillis(b []byte, d time.Duration) []byte {
	us := max(int64(d/time.Microsecond), 0)
	b = strconv.AppendInt(b, us/1000, 10)
	frac := us % 1000
	return append(b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
}

func appendPeers(b []byte, e *Edge) []byte {
	b = appendStringField(b, `,"source":`, e.Source.Service)
	b = appendStringField(b, `,"source_identity":`, e.Source.Identity)
	return appendStringField(b, `,"destination":`, e.Destination.Service)
}

// appendStringField appends key (`,"name":`, a constant so that the line
// costs one append per field name) and v as a JSON string.
func appendStringField(b []byte, key, v string) []byte {
	return appendJSONString(append(b, key...), v)
}

func appendIntField(b []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(b, key...), v, 10)
}

const hexDigits = "0123456789abcdef"

// plain marks the ASCII bytes a JSON string holds unescaped; a table
// lookup is one branch per byte where the comparisons are four.
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString appends s as a JSON string. It escapes what JSON
// requires (quote, backslash, control characters) and U+2028/U+2029 (which
// break JavaScript consumers), and replaces each byte of invalid UTF-8
// with U+FFFD, as encoding/json does, so that every line is valid JSON
// whatever a client put in its request line.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	// Most values (methods, hosts, paths, IDs) need no escaping: find the
	// first byte that might, eight at a time.
	i := plainPrefix(s)
	if i == len(s) {
		b = append(b, s...)
		return append(b, '"')
	}
	start := 0
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// plainPrefix is the length of s's prefix of printable ASCII other than
// '"' and '\\'. It tests eight bytes per step (the SWAR "has a byte less
// than n" and "has a byte equal to n" tricks) and the rest one by one.
func plainPrefix(s string) int {
	const (
		lo = 0x0101010101010101
		hi = 0x8080808080808080
	)
	i := 0
	for ; i+8 <= len(s); i += 8 {
		x := binary.LittleEndian.Uint64([]byte(s[i : i+8]))
		quote, bslash := x^(lo*'"'), x^(lo*'\\')
		special := (x - lo*0x20) | (quote-lo)&^quote | (bslash-lo)&^bslash | x
		if special&hi != 0 {
			break
		}
	}
	for ; i < len(s) && s[i] < utf8.RuneSelf && plain[s[i]]; i++ {
	}
	return i
}
