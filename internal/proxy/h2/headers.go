package h2

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Header blocks are decoded here rather than by the Framer's
// ReadMetaHeaders: that allocates a MetaHeadersFrame, an emit closure and
// a growing field slice for every HEADERS frame, a fifth of the
// allocations the mesh hop added per request. This decoder lives as long
// as the connection, emits into one field slice per block sized from the
// previous block, and applies the same rules: RFC 9113 8.2 (lower-case
// token names, valid values, pseudo-header fields first, known and not
// repeated, not request and response ones mixed) and the header list
// size limit.

// headerBlock is a decoded HEADERS frame with its CONTINUATION frames.
// The reader goroutine reuses it: a consumer keeps fields, not the block.
type headerBlock struct {
	streamID uint32
	ended    bool
	// fields are the decoded fields, pseudo-header fields first (npseudo
	// of them); the slice is new for every block.
	fields  []hpack.HeaderField
	npseudo int
	// truncated: the list exceeded maxHeaderListSize and the rest was
	// dropped.
	truncated bool

	// remain is what is left of the size budget while decoding; invalid is
	// the first rule the block broke.
	remain  uint32
	invalid error
}

// headerDecoder is a connection's HPACK decoder and the block it fills;
// reader goroutine only.
type headerDecoder struct {
	dec *hpack.Decoder
	hb  headerBlock
	// hint is the field count of the last block, the capacity of the next.
	hint int
}

func (d *headerDecoder) init() {
	d.dec = hpack.NewDecoder(4096, d.emit)
	d.dec.SetMaxStringLength(maxHeaderListSize)
	d.hint = 8
}

// emit receives one decoded field.
func (d *headerDecoder) emit(f hpack.HeaderField) {
	hb := &d.hb
	if hb.invalid != nil || hb.truncated {
		return
	}
	if !httpguts.ValidHeaderFieldValue(f.Value) {
		// The value may be sensitive: only the name is told.
		hb.invalid = fmt.Errorf("h2: invalid value of header field %q", f.Name)
		return
	}
	if strings.HasPrefix(f.Name, ":") {
		if hb.npseudo != len(hb.fields) {
			hb.invalid = fmt.Errorf("h2: pseudo-header field %q after a regular one", f.Name)
			return
		}
		if err := checkPseudo(f.Name, hb.fields); err != nil {
			hb.invalid = err
			return
		}
		hb.npseudo++
	} else if !validFieldName(f.Name) {
		hb.invalid = fmt.Errorf("h2: invalid header field name %q", f.Name)
		return
	}
	size := f.Size()
	if size > hb.remain {
		hb.truncated = true
		hb.remain = 0
		return
	}
	hb.remain -= size
	hb.fields = append(hb.fields, f)
}

// checkPseudo checks a pseudo-header field against those before it.
func checkPseudo(name string, before []hpack.HeaderField) error {
	request := true
	switch name {
	case ":method", ":path", ":scheme", ":authority", ":protocol":
	case ":status":
		request = false
	default:
		return fmt.Errorf("h2: unknown pseudo-header field %q", name)
	}
	for _, f := range before {
		if f.Name == name {
			return fmt.Errorf("h2: pseudo-header field %q repeated", name)
		}
		if (f.Name == ":status") == request {
			return errors.New("h2: request and response pseudo-header fields mixed")
		}
	}
	return nil
}

// validFieldName: a token without upper-case letters (RFC 9113 8.2.1).
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for _, r := range name {
		if !httpguts.IsTokenRune(r) || ('A' <= r && r <= 'Z') {
			return false
		}
	}
	return true
}

// readFrame reads the next frame. A HEADERS frame comes back as the
// decoded block with its CONTINUATION frames read (the frame is nil); the
// block is valid until the next call. Errors are the Framer's, a
// ConnectionError when the block cannot be decoded (the HPACK state is
// then lost), or a StreamError for a block that decoded but broke a rule.
func (w *wire) readFrame() (http2.Frame, *headerBlock, error) {
	f, err := w.fr.ReadFrame()
	if err != nil {
		return nil, nil, err
	}
	hf, ok := f.(*http2.HeadersFrame)
	if !ok {
		return f, nil, nil
	}
	d := &w.hdec
	hb := &d.hb
	*hb = headerBlock{
		streamID: hf.StreamID,
		ended:    hf.StreamEnded(),
		fields:   make([]hpack.HeaderField, 0, d.hint),
		remain:   maxHeaderListSize,
	}
	frag, done := hf.HeaderBlockFragment(), hf.HeadersEnded()
	for {
		// A block far over the limit is not worth decoding, and after a
		// broken rule the remaining fragments are not followed: both end
		// the connection, as the Framer does.
		if int64(len(frag)) > 2*int64(hb.remain) || hb.invalid != nil {
			return nil, nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := d.dec.Write(frag); err != nil {
			return nil, nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if done {
			break
		}
		// The Framer checks that only CONTINUATION frames of this stream
		// follow until END_HEADERS.
		f, err := w.fr.ReadFrame()
		if err != nil {
			return nil, nil, err
		}
		cf := f.(*http2.ContinuationFrame)
		frag, done = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := d.dec.Close(); err != nil {
		return nil, nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if hb.invalid != nil {
		return nil, nil, http2.StreamError{StreamID: hb.streamID, Code: http2.ErrCodeProtocol, Cause: hb.invalid}
	}
	d.hint = max(len(hb.fields), 4)
	return nil, hb, nil
}

// pseudo returns the value of the pseudo-header field name (":path").
func (hb *headerBlock) pseudo(name string) string {
	for _, f := range hb.fields[:hb.npseudo] {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// regular returns the regular fields.
func (hb *headerBlock) regular() []hpack.HeaderField { return hb.fields[hb.npseudo:] }
