package h1

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// headView is reqHead with strings, for comparison.
type headView struct {
	Method, Target, Origin, Path, Host string
	Slash                              bool
	Minor                              int
	Fields                             []fieldView
	ContentLength                      int64
	Chunked, HasHost, Absolute, Close  bool
	Expect, Upgrade, TETrailers        bool
}

type fieldView struct {
	Name, Value string
	Kind        fieldKind
	Hop         bool
}

func viewOf(h *reqHead) headView {
	v := headView{
		Method: string(h.method), Target: string(h.target), Origin: string(h.origin),
		Path: string(h.path), Host: string(h.host), Slash: h.slash, Minor: h.minor,
		ContentLength: h.contentLength, Chunked: h.chunked, HasHost: h.hasHost,
		Absolute: h.absolute, Close: h.close, Expect: h.expectContinue,
		Upgrade: h.upgrade, TETrailers: h.teTrailers,
	}
	for _, f := range h.fields {
		v.Fields = append(v.Fields, fieldView{string(f.name), string(f.value), f.kind, f.hop})
	}
	return v
}

// formatRequestHead serialises a parsed head canonically (CRLF, one space
// after the colon).
func formatRequestHead(h *reqHead) []byte {
	var b []byte
	b = append(b, h.method...)
	b = append(b, ' ')
	b = append(b, h.target...)
	b = append(b, " HTTP/1."...)
	b = strconv.AppendInt(b, int64(h.minor), 10)
	b = append(b, "\r\n"...)
	for _, f := range h.fields {
		b = append(b, f.name...)
		b = append(b, ": "...)
		b = append(b, f.value...)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...)
}

func TestParseRequestHead(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    headView
		wantErr error
	}{
		{
			name: "get",
			in:   "GET /a/b?q=1 HTTP/1.1\r\nHost: example.com\r\nX-A:  v  \r\n\r\n",
			want: headView{
				Method: "GET", Target: "/a/b?q=1", Origin: "/a/b?q=1", Path: "/a/b", Host: "example.com",
				Minor: 1, ContentLength: -1, HasHost: true,
				Fields: []fieldView{{"Host", "example.com", kindHost, false}, {"X-A", "v", kindOther, false}},
			},
		},
		{
			name: "bare LF, chunked, connection tokens",
			in:   "POST /u HTTP/1.1\nhost: h\nTransfer-Encoding: Chunked\nConnection: close, X-Hop\nX-Hop: 1\nTE: trailers\nExpect: 100-continue\n\n",
			want: headView{
				Method: "POST", Target: "/u", Origin: "/u", Path: "/u", Host: "h", Minor: 1,
				ContentLength: -1, Chunked: true, HasHost: true, Close: true, Expect: true, TETrailers: true,
				Fields: []fieldView{
					{"host", "h", kindHost, false},
					{"Transfer-Encoding", "Chunked", kindTransferEncoding, false},
					{"Connection", "close, X-Hop", kindConnection, false},
					{"X-Hop", "1", kindOther, true},
					{"TE", "trailers", kindTE, false},
					{"Expect", "100-continue", kindExpect, false},
				},
			},
		},
		{
			name: "absolute form",
			in:   "GET http://svc.default.mesh:8080?x HTTP/1.1\r\nHost: other\r\n\r\n",
			want: headView{
				Method: "GET", Target: "http://svc.default.mesh:8080?x", Origin: "?x", Slash: true, Path: "/",
				Host: "svc.default.mesh:8080", Minor: 1, ContentLength: -1, HasHost: true, Absolute: true,
				Fields: []fieldView{{"Host", "other", kindHost, false}},
			},
		},
		{
			name: "http/1.0 closes, duplicate equal content-length",
			in:   "PUT /x HTTP/1.0\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
			want: headView{
				Method: "PUT", Target: "/x", Origin: "/x", Path: "/x", Minor: 0, ContentLength: 3, Close: true,
				Fields: []fieldView{{"Content-Length", "3", kindContentLength, false}, {"Content-Length", "3", kindContentLength, false}},
			},
		},
		{
			name: "upgrade",
			in:   "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n\r\n",
			want: headView{
				Method: "GET", Target: "/", Origin: "/", Path: "/", Host: "h", Minor: 1, ContentLength: -1,
				HasHost: true, Upgrade: true,
				Fields: []fieldView{
					{"Host", "h", kindHost, false},
					{"Connection", "Upgrade, HTTP2-Settings", kindConnection, false},
					{"Upgrade", "h2c", kindUpgrade, false},
					{"HTTP2-Settings", "AA", kindOther, true},
				},
			},
		},
		{name: "space in name", in: "GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n", wantErr: errField},
		{name: "space before colon", in: "GET / HTTP/1.1\r\nHost: h\r\nName : v\r\n\r\n", wantErr: errField},
		{name: "obs-fold", in: "GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n c\r\n\r\n", wantErr: errObsFold},
		{name: "nul in value", in: "GET / HTTP/1.1\r\nHost: h\r\nA: b\x00c\r\n\r\n", wantErr: errField},
		{name: "bare CR in value", in: "GET / HTTP/1.1\r\nHost: h\r\nA: b\rc\r\n\r\n", wantErr: errField},
		{name: "conflicting content-length", in: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", wantErr: errConflictLength},
		{name: "signed content-length", in: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", wantErr: errContentLength},
		{name: "list content-length", in: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\n", wantErr: errContentLength},
		{name: "te and cl", in: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", wantErr: errLengthAndChunk},
		{name: "unknown coding", in: "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", wantErr: errTransferCoding},
		{name: "chunked twice", in: "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", wantErr: errChunkedTwice},
		{name: "coding in 1.0", in: "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", wantErr: errCodingInHTTP10},
		{name: "missing host", in: "GET / HTTP/1.1\r\n\r\n", wantErr: errMissingHost},
		{name: "two hosts", in: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", wantErr: errMultipleHost},
		{name: "http/2", in: "GET / HTTP/2.0\r\n\r\n", wantErr: errVersion},
		{name: "lower-case version", in: "GET / http/1.1\r\nHost: h\r\n\r\n", wantErr: errRequestLine},
		{name: "double space", in: "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", wantErr: errRequestLine},
		{name: "bad target", in: "GET foo HTTP/1.1\r\nHost: h\r\n\r\n", wantErr: errTarget},
		{name: "asterisk not options", in: "GET * HTTP/1.1\r\nHost: h\r\n\r\n", wantErr: errTarget},
		{name: "unterminated", in: "GET / HTTP/1.1\r\nHost: h\r\n", wantErr: errUnterminated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h reqHead
			err := parseRequestHead([]byte(tt.in), &h)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parseRequestHead() error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if diff := cmp.Diff(tt.want, viewOf(&h)); diff != "" {
				t.Errorf("parseRequestHead() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadHead(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		max     int
		want    string
		wantErr error
	}{
		{name: "leading empty lines skipped", in: "\r\n\nGET / HTTP/1.1\r\nHost: h\r\n\r\nrest", max: 1024, want: "GET / HTTP/1.1\r\nHost: h\r\n\r\n"},
		{name: "line longer than the reader's buffer", in: "GET /" + strings.Repeat("a", 100) + " HTTP/1.1\r\n\r\n", max: 1024, want: "GET /" + strings.Repeat("a", 100) + " HTTP/1.1\r\n\r\n"},
		{name: "too large", in: "GET / HTTP/1.1\r\nA: " + strings.Repeat("a", 100) + "\r\n\r\n", max: 64, wantErr: errHeadTooLarge},
		{name: "too many empty lines", in: strings.Repeat("\r\n", 20) + "GET / HTTP/1.1\r\n\r\n", max: 1024, wantErr: errLeadingLines},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tt.in), 16)
			got, err := readHead(br, nil, tt.max, true)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("readHead() error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && string(got) != tt.want {
				t.Errorf("readHead() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseResponseHead(t *testing.T) {
	type view struct {
		Status        int
		StatusRest    string
		ContentLength int64
		Chunked       bool
		Close         bool
		Hop           []string
	}
	tests := []struct {
		name    string
		in      string
		want    view
		wantErr error
	}{
		{name: "ok", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", want: view{200, "200 OK", 5, false, false, nil}},
		{name: "no reason", in: "HTTP/1.1 204\r\n\r\n", want: view{204, "204", -1, false, false, nil}},
		{name: "chunked beats length", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", want: view{200, "200 OK", -1, true, true, nil}},
		{name: "1.0 closes", in: "HTTP/1.0 200 OK\r\n\r\n", want: view{200, "200 OK", -1, false, true, nil}},
		{name: "1.0 keep-alive", in: "HTTP/1.0 200 OK\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n", want: view{200, "200 OK", -1, false, false, []string{"X-A"}}},
		{name: "bad code", in: "HTTP/1.1 2x0 OK\r\n\r\n", wantErr: errStatusLine},
		{name: "gzip coding", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", wantErr: errRespCoding},
		{name: "conflicting length", in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", wantErr: errStatusLine},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h respHead
			err := parseResponseHead([]byte(tt.in), &h)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parseResponseHead() error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			got := view{h.status, string(h.statusRest), h.contentLength, h.chunked, h.close, nil}
			for _, f := range h.fields {
				if f.hop {
					got.Hop = append(got.Hop, string(f.name))
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseResponseHead() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCopyChunked(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		rechunk bool
		want    string
		wantErr error
	}{
		{name: "rechunk with trailers", in: "3;ext=1\r\nabc\r\n1\r\nd\r\n0\r\nX-T: 1\r\n\r\nNEXT", rechunk: true, want: "3\r\nabc\r\n1\r\nd\r\n0\r\nX-T: 1\r\n\r\n"},
		{name: "dechunk", in: "3\nabc\n0\n\n", want: "abc"},
		{name: "bad size", in: "zz\r\nabc\r\n0\r\n\r\n", rechunk: true, wantErr: errChunkedEncoding},
		{name: "missing CRLF after data", in: "3\r\nabcd\r\n0\r\n\r\n", rechunk: true, wantErr: errChunkedEncoding},
		{name: "size overflow", in: "ffffffffffffffffff\r\n", rechunk: true, wantErr: errChunkedEncoding},
		{name: "bad trailer", in: "0\r\nbad trailer\r\n\r\n", rechunk: true, wantErr: errChunkedEncoding},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			src := bufio.NewReader(strings.NewReader(tt.in))
			dst := bufio.NewWriter(&out)
			var cb copyBuf
			defer cb.release()
			rerr, werr := copyChunked(dst, src, &cb, tt.rechunk)
			if werr != nil {
				t.Fatalf("copyChunked() write error = %v", werr)
			}
			if !errors.Is(rerr, tt.wantErr) {
				t.Fatalf("copyChunked() read error = %v, want %v", rerr, tt.wantErr)
			}
			if rerr != nil {
				return
			}
			_ = dst.Flush()
			if got := out.String(); got != tt.want {
				t.Errorf("copyChunked() wrote %q, want %q", got, tt.want)
			}
		})
	}
}

func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /u?q HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\nConnection: close, X-A\nX-A: 1\n\n",
		"GET http://a:1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
		"OPTIONS * HTTP/1.0\r\nExpect: 100-continue\r\nTE: trailers, deflate;q=0.5\r\n\r\n",
		"\r\nCONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		head, err := readHead(br, nil, 4096, true)
		if err != nil {
			return
		}
		var h reqHead
		if err := parseRequestHead(head, &h); err != nil {
			return
		}
		out := formatRequestHead(&h)
		var h2 reqHead
		if err := parseRequestHead(out, &h2); err != nil {
			t.Fatalf("re-parse of %q (from %q): %v", out, head, err)
		}
		if diff := cmp.Diff(viewOf(&h), viewOf(&h2)); diff != "" {
			t.Fatalf("re-parse of %q (from %q) mismatch (-first +second):\n%s", out, head, diff)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	head := []byte("GET /api/v1/orders/12345?expand=items&limit=20 HTTP/1.1\r\n" +
		"Host: orders.default.mesh:8080\r\n" +
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) verge-bench/1.0\r\n" +
		"Accept: application/json\r\n" +
		"Accept-Encoding: gzip, deflate\r\n" +
		"Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345\r\n" +
		"X-Request-Id: 7f9c2ba4-e88f-11ee-a951-0242ac120002\r\n" +
		"Connection: keep-alive\r\n\r\n")
	src := bytes.NewReader(head)
	br := bufio.NewReader(src)
	var buf []byte
	var h reqHead
	b.SetBytes(int64(len(head)))
	b.ReportAllocs()
	for b.Loop() {
		src.Reset(head)
		br.Reset(src)
		var err error
		buf, err = readHead(br, buf[:0], defaultMaxHeaderBytes, true)
		if err != nil {
			b.Fatal(err)
		}
		if err := parseRequestHead(buf, &h); err != nil {
			b.Fatal(err)
		}
	}
}
