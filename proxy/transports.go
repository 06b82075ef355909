package proxy

import (
	"fmt"
	"strings"

	ma "github.com/multiformats/go-multiaddr"
)

// Transport names, as Kitsune reports them in errors and startup output.
const (
	TCP          = "tcp"
	QUIC         = "quic-v1"
	WS           = "ws"
	WSS          = "wss" // /tls/ws or /wss
	WebTransport = "webtransport"
	WebRTCDirect = "webrtc-direct"
)

// TransportOf names the transport a listen multiaddr asks for, or returns an
// error saying why Kitsune cannot listen on it.
func TransportOf(a ma.Multiaddr) (string, error) {
	has := func(code int) bool {
		for _, c := range a {
			if c.Code() == code {
				return true
			}
		}
		return false
	}
	switch {
	case has(ma.P_CIRCUIT), has(ma.P_P2P):
		return "", fmt.Errorf("%s is not a listen address (no /p2p or /p2p-circuit)", a)
	case has(ma.P_WEBRTC_DIRECT):
		if has(ma.P_CERTHASH) {
			return "", fmt.Errorf("%s: leave out /certhash; Kitsune derives the WebRTC-direct certificate from its key", a)
		}
		return WebRTCDirect, nil
	case has(ma.P_WEBRTC):
		return "", fmt.Errorf("%s: browser-to-browser /webrtc is not supported; listen on /webrtc-direct", a)
	case has(ma.P_WEBTRANSPORT):
		if has(ma.P_CERTHASH) {
			return "", fmt.Errorf("%s: leave out /certhash; Kitsune manages the WebTransport certificates", a)
		}
		return WebTransport, nil
	case has(ma.P_QUIC_V1):
		return QUIC, nil
	case has(ma.P_QUIC):
		return "", fmt.Errorf("%s: QUIC draft-29 (/quic) is gone from go-libp2p; use /quic-v1", a)
	case has(ma.P_WSS), has(ma.P_TLS) && has(ma.P_WS):
		return WSS, nil
	case has(ma.P_WS):
		return WS, nil
	case has(ma.P_TCP):
		return TCP, nil
	}
	return "", fmt.Errorf("%s: no transport for it (Kitsune listens on tcp, quic-v1, ws, tls/ws, webtransport and webrtc-direct)", a)
}

// WorksWithPSK reports whether go-libp2p can run the transport on a private
// network. A PSK encrypts a byte stream before the security handshake;
// QUIC, WebTransport and WebRTC bring their own encryption underneath, so
// go-libp2p refuses them on a private network.
func WorksWithPSK(transport string) bool {
	switch transport {
	case TCP, WS, WSS:
		return true
	}
	return false
}

// CheckListenAddrs validates every listen address against what the host
// will be built with: a PSK rules out the UDP transports, and a wss listener
// needs a certificate. The errors say what to change.
func CheckListenAddrs(addrs []ma.Multiaddr, withPSK, withTLS bool) error {
	var noPSK []string
	wss := false
	for _, a := range addrs {
		t, err := TransportOf(a)
		if err != nil {
			return err
		}
		if withPSK && !WorksWithPSK(t) {
			noPSK = append(noPSK, a.String())
		}
		if t == WSS {
			wss = true
		}
	}
	if len(noPSK) > 0 {
		return fmt.Errorf("a private network (PSK) runs only over TCP and WebSocket (ws, tls/ws) in go-libp2p; "+
			"QUIC, WebTransport and WebRTC-direct bring their own encryption and cannot carry it. "+
			"Remove %s from the listen addresses", strings.Join(noPSK, ", "))
	}
	if wss && !withTLS {
		return fmt.Errorf("a /tls/ws or /wss listen address needs a certificate and key")
	}
	return nil
}
