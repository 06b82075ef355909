package preload

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/kitsune-lb/kitsune/internal/iplimit"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"go.uber.org/zap"
)

// RefsPath is the one path served.
const RefsPath = "/api/v0/refs"

// Defaults for Config's limits.
const (
	DefaultMaxPerIP = 4
	DefaultTimeout  = 5 * time.Minute
)

// Config configures a Handler.
type Config struct {
	// Chooser picks the node for each call. Required.
	Chooser Chooser
	// Sessions hears when each call starts and ends; nil means NoSessions.
	Sessions Sessions
	// MaxPerIP bounds concurrent calls per client address (per /64 for
	// IPv6); DefaultMaxPerIP when zero.
	MaxPerIP int
	// Timeout bounds one call from admission to its last byte;
	// DefaultTimeout when zero.
	Timeout time.Duration
	// TrustedProxies are the peers whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// Client makes the calls to the nodes; a keep-alive client without
	// overall timeout when nil (Timeout bounds each call).
	Client *http.Client
	// Log is for operator-facing events; nothing is logged when nil.
	Log *zap.Logger
	// Observer, when set, hears about every refs call (metrics, status).
	Observer Observer
}

// Handler serves POST /api/v0/refs and refuses everything else. Make one
// with New.
type Handler struct {
	chooser  Chooser
	sessions Sessions
	timeout  time.Duration
	trusted  []netip.Prefix
	client   *http.Client
	log      *zap.Logger
	limit    *iplimit.Limiter
	observer Observer
}

// New checks cfg and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Chooser == nil {
		return nil, errors.New("preload: no Chooser")
	}
	if cfg.MaxPerIP < 0 || cfg.Timeout < 0 {
		return nil, errors.New("preload: MaxPerIP and Timeout must not be negative")
	}
	h := &Handler{
		chooser:  cfg.Chooser,
		sessions: cfg.Sessions,
		timeout:  cfg.Timeout,
		client:   cfg.Client,
		log:      cfg.Log,
		observer: cfg.Observer,
	}
	for _, p := range cfg.TrustedProxies {
		h.trusted = append(h.trusted, p.Masked())
	}
	if h.sessions == nil {
		h.sessions = NoSessions{}
	}
	if h.timeout == 0 {
		h.timeout = DefaultTimeout
	}
	if cfg.MaxPerIP == 0 {
		cfg.MaxPerIP = DefaultMaxPerIP
	}
	h.limit = iplimit.New(cfg.MaxPerIP)
	if h.client == nil {
		h.client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	return h, nil
}

// Kubo's error codes (go-ipfs-cmds ErrorType), so Kubo clients read our
// refusals as they read Kubo's.
const (
	codeNormal      = 0
	codeClient      = 1
	codeNotFound    = 3
	codeRateLimited = 5
)

// Headers of Kubo's answer that clients use to decode it; nothing else is
// passed on.
var passHeaders = []string{"Content-Type", "X-Chunked-Output", "X-Stream-Output", "X-Content-Length"}

const (
	streamErrHeader = "X-Stream-Error"
	exposeHeaders   = "X-Stream-Output, X-Chunked-Output, X-Content-Length, X-Stream-Error"
	allowMethods    = "POST, OPTIONS"
	// writeGrace is how long past the call's deadline a write may still
	// take: enough to send the closing trailer, too little for a client
	// that stopped reading to hold the handler.
	writeGrace = 10 * time.Second
)

var (
	errCallTimeout = errors.New("preload call time limit")
	// ErrShutdown is the cause to cancel a request's base context with
	// when the server stops; calls then end saying so.
	ErrShutdown = errors.New("preload server shutting down")
)

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(writeGrace))
	if r.ContentLength != 0 {
		// refs takes no body, and net/http drains an unread one before
		// the first byte of the answer: a client trickling a body would
		// hold the call, its address's slot and the node's walk until
		// the read timeout. Full duplex leaves the body alone.
		_ = rc.EnableFullDuplex()
	}
	hdr := w.Header()
	// Every answer may be read by a page on any origin: the call is public
	// and carries no credentials.
	hdr.Set("Access-Control-Allow-Origin", "*")
	hdr.Set("X-Content-Type-Options", "nosniff")

	if r.URL.Path != RefsPath {
		h.refuse(w, http.StatusNotFound, codeNotFound, "only "+RefsPath+" is served on the preload port")
		return
	}
	switch r.Method {
	case http.MethodPost:
	case http.MethodOptions:
		preflight(w, r)
		return
	default:
		hdr.Set("Allow", allowMethods)
		h.refuse(w, http.StatusMethodNotAllowed, codeClient, "method "+r.Method+" not allowed: use POST")
		return
	}
	start := time.Now()
	res := CallResult{Outcome: OutcomeBadRequest, Status: http.StatusBadRequest}
	if h.observer != nil {
		defer func() {
			res.Duration = time.Since(start)
			h.observer.CallFinished(res)
		}()
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		h.refuse(w, http.StatusBadRequest, codeClient, "bad query string: "+err.Error())
		return
	}
	req, err := parseRefs(q)
	if err != nil {
		h.refuse(w, http.StatusBadRequest, codeClient, err.Error())
		return
	}
	client := clientIP(r, h.trusted)
	res.Call = Call{Root: req.root, Path: req.path, MaxDepth: req.maxDepth(), Client: client}
	release, ok := h.limit.Acquire(client)
	if !ok {
		hdr.Set("Retry-After", "5")
		res.Outcome, res.Status = OutcomeRateLimited, http.StatusTooManyRequests
		h.refuse(w, http.StatusTooManyRequests, codeRateLimited, "too many concurrent refs calls from this address")
		return
	}
	defer release()
	base, ok := h.chooser.ChooseAPI(req.root)
	if !ok || base == "" {
		hdr.Set("Retry-After", "5")
		res.Outcome, res.Status = OutcomeNoNode, http.StatusServiceUnavailable
		h.refuse(w, http.StatusServiceUnavailable, codeNormal, "no downstream node available")
		return
	}

	target := Target{URL: base}
	if pl, ok := h.chooser.(PeerLookup); ok {
		target.Peer, _ = pl.PeerOf(base)
	}

	ctx, cancel := context.WithTimeoutCause(r.Context(), h.timeout, errCallTimeout)
	defer cancel()
	_ = rc.SetWriteDeadline(time.Now().Add(h.timeout + writeGrace))
	call := Call{Root: req.root, Path: req.path, MaxDepth: req.maxDepth(), Node: target, Client: client}
	res.Call, res.Admitted = call, true
	if h.observer != nil {
		h.observer.CallStarted(call)
	}
	if end := h.sessions.Begin(call); end != nil {
		defer end()
	}
	var outcome string
	outcome, res.Status = h.forward(ctx, w, rc, target, req)
	res.Outcome = outcomeOf(outcome)
	h.log.Info("preload call finished", zap.Stringer("root", req.root), zap.String("node", target.URL),
		zap.Stringer("client", client), zap.Duration("took", time.Since(start)), zap.String("outcome", outcome),
		zap.Int("status", res.Status))
}

// forward makes the call to the node and relays its answer. It returns a
// word for the log and the status sent to the client (0 when none was).
func (h *Handler) forward(ctx context.Context, w http.ResponseWriter, rc *http.ResponseController, t Target, req refsRequest) (string, int) {
	out, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(t.URL, "/")+RefsPath+"?"+req.query(), nil)
	if err != nil {
		h.log.Error("bad downstream URL", zap.String("node", t.URL), zap.Error(err))
		h.refuse(w, http.StatusBadGateway, codeNormal, "downstream node misconfigured")
		return "bad node URL", http.StatusBadGateway
	}
	out.Header.Set("User-Agent", "kitsune-preload")
	resp, err := h.client.Do(out)
	if err != nil {
		switch cause := context.Cause(ctx); {
		case errors.Is(cause, errCallTimeout):
			h.refuse(w, http.StatusGatewayTimeout, codeNormal, fmt.Sprintf("no answer from the downstream node within %v", h.timeout))
			return "timeout before answer", http.StatusGatewayTimeout
		case errors.Is(cause, ErrShutdown):
			h.refuse(w, http.StatusServiceUnavailable, codeNormal, "Kitsune is shutting down")
			return "shutdown", http.StatusServiceUnavailable
		case cause != nil:
			return "client gone", 0
		}
		h.log.Warn("downstream refs call failed", zap.String("node", t.URL), zap.Error(err))
		h.refuse(w, http.StatusBadGateway, codeNormal, "downstream node unreachable")
		return "node unreachable", http.StatusBadGateway
	}
	defer resp.Body.Close()

	hdr := w.Header()
	for _, k := range passHeaders {
		if v := resp.Header.Get(k); v != "" {
			hdr.Set(k, v)
		}
	}
	hdr.Set("Access-Control-Expose-Headers", exposeHeaders)
	hdr.Set("Trailer", streamErrHeader)
	w.WriteHeader(resp.StatusCode)
	_ = rc.Flush()

	// One line per Kubo object: write each as soon as it is complete and
	// flush, so a client sees refs while the node is still fetching.
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var readErr error
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if _, werr := w.Write(line); werr != nil {
				return "client gone", resp.StatusCode
			}
			if err == nil {
				if rc.Flush() != nil {
					return "client gone", resp.StatusCode
				}
			}
		}
		if err == nil || err == bufio.ErrBufferFull {
			continue
		}
		if err != io.EOF {
			readErr = err
		}
		break
	}
	_ = rc.Flush()

	var streamErr, outcome string
	switch cause := context.Cause(ctx); {
	case readErr == nil:
		streamErr, outcome = resp.Trailer.Get(streamErrHeader), "done"
		if resp.StatusCode != http.StatusOK {
			outcome = "node answered " + resp.Status
		}
	case errors.Is(cause, errCallTimeout):
		streamErr, outcome = fmt.Sprintf("preload call stopped at Kitsune's %v limit", h.timeout), "timeout"
	case errors.Is(cause, ErrShutdown):
		streamErr, outcome = "preload call stopped: Kitsune is shutting down", "shutdown"
	case cause != nil:
		return "client gone", resp.StatusCode
	default:
		h.log.Warn("downstream refs answer broke off", zap.String("node", t.URL), zap.Error(readErr))
		streamErr, outcome = "downstream node connection lost", "node lost"
	}
	if streamErr != "" {
		// Declared in Trailer before the header was written, so this
		// goes out as the trailer, where Kubo puts it.
		hdr.Set(streamErrHeader, streamErr)
		if outcome == "done" {
			outcome = "done with stream error"
		}
	}
	return outcome, resp.StatusCode
}

// preflight answers a CORS preflight: any origin may POST, with whatever
// headers it likes, since none of them is passed on.
func preflight(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Allow", allowMethods)
	hdr.Set("Access-Control-Allow-Methods", allowMethods)
	if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" && len(rh) <= 1024 && isHeaderList(rh) {
		hdr.Set("Access-Control-Allow-Headers", rh)
	}
	if r.Header.Get("Access-Control-Request-Private-Network") == "true" {
		hdr.Set("Access-Control-Allow-Private-Network", "true")
	}
	hdr.Set("Access-Control-Max-Age", "86400")
	w.WriteHeader(http.StatusNoContent)
}

func isHeaderList(s string) bool {
	for _, c := range s {
		if !(c == ',' || c == ' ' || c == '-' || c == '_' || c == '.' ||
			'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// refuse answers with an error in Kubo's shape.
func (h *Handler) refuse(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Message string
		Code    int
		Type    string
	}{"preload: " + msg, code, "error"})
}

// Stats is a snapshot for tests and status pages.
type Stats struct {
	// Clients is how many client addresses have a call running.
	Clients int
}

// Stats returns a snapshot.
func (h *Handler) Stats() Stats {
	return Stats{Clients: h.limit.Active()}
}

// refsRequest is a validated refs call.
type refsRequest struct {
	root      cid.Cid
	path      string
	recursive bool
	unique    bool
	edges     bool
	format    string
	depth     int // Kubo's max-depth; -1 is no limit
}

// maxDepth is how deep Kubo will walk, as refs computes it.
func (r refsRequest) maxDepth() int {
	if !r.recursive {
		return 1
	}
	return r.depth
}

// query is the query string sent to the node: the same options, under
// their long names, and nothing else.
func (r refsRequest) query() string {
	v := url.Values{}
	v.Set("arg", r.path)
	if r.recursive {
		v.Set("recursive", "true")
	}
	if r.unique {
		v.Set("unique", "true")
	}
	if r.edges {
		v.Set("edges", "true")
	}
	if r.format != "" {
		v.Set("format", r.format)
	}
	if r.depth != -1 {
		v.Set("max-depth", strconv.Itoa(r.depth))
	}
	v.Set("encoding", "json")
	v.Set("stream-channels", "true")
	return v.Encode()
}

const maxFormatLen = 256

func parseRefs(q url.Values) (refsRequest, error) {
	req := refsRequest{depth: -1}
	args := q["arg"]
	switch len(args) {
	case 0:
		return req, errors.New(`argument "ipfs-path" is required: give arg=<cid>`)
	case 1:
	default:
		return req, errors.New("give one arg per call")
	}
	var err error
	if req.root, req.path, err = parsePath(args[0]); err != nil {
		return req, err
	}
	for _, o := range []struct {
		dst   *bool
		names []string
	}{
		{&req.recursive, []string{"r", "recursive"}},
		{&req.unique, []string{"u", "unique"}},
		{&req.edges, []string{"e", "edges"}},
	} {
		for _, n := range o.names {
			vs, ok := q[n]
			if !ok {
				continue
			}
			if len(vs) > 1 {
				return req, fmt.Errorf("option %s given more than once", n)
			}
			b, err := parseBool(vs[0])
			if err != nil {
				return req, fmt.Errorf("option %s: %q is not a boolean", n, vs[0])
			}
			*o.dst = b
		}
	}
	if vs, ok := q["max-depth"]; ok {
		d, err := strconv.Atoi(vs[0])
		if len(vs) > 1 || err != nil || d < -1 {
			return req, fmt.Errorf("option max-depth: want one integer ≥ -1, got %q", vs)
		}
		req.depth = d
	}
	if vs, ok := q["format"]; ok {
		if len(vs) > 1 || len(vs[0]) > maxFormatLen {
			return req, fmt.Errorf("option format: want one string of at most %d bytes", maxFormatLen)
		}
		if vs[0] != "<dst>" { // Kubo's default, which edges requires
			req.format = vs[0]
		}
	}
	if req.edges && req.format != "" {
		return req, errors.New("using format argument with edges is not allowed")
	}
	return req, nil
}

// parseBool reads a boolean option as Kubo does: an empty value is true.
func parseBool(s string) (bool, error) {
	if s == "" {
		return true, nil
	}
	return strconv.ParseBool(s)
}

// parsePath accepts "<cid>", "<cid>/sub/path" and "/ipfs/<cid>/sub/path",
// and returns the root CID and the arg to send: the CID as given, or the
// path in its /ipfs/ form. IPNS names are refused: resolving them would
// send the node to the routing system on a stranger's behalf.
func parsePath(arg string) (cid.Cid, string, error) {
	s := arg
	prefixed := strings.HasPrefix(s, "/")
	if prefixed {
		ns, rest, _ := strings.Cut(s[1:], "/")
		if ns != "ipfs" {
			return cid.Undef, "", fmt.Errorf("arg %q: only /ipfs/ paths are served", arg)
		}
		s = rest
	}
	root, rest, hasRest := strings.Cut(s, "/")
	c, err := cid.Decode(root)
	if err != nil {
		return cid.Undef, "", fmt.Errorf("arg %q: invalid CID: %v", arg, err)
	}
	if !hasRest && !prefixed {
		return c, root, nil
	}
	p := "/ipfs/" + root
	if hasRest {
		p += "/" + rest
	}
	return c, p, nil
}
