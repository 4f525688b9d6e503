// The real backends and the WebSocket client that scripts/e2e-protocols drives through the
// gateway. Built and cached by `scripts/test-tool protocols`.
//
//	protocols grpc-backend --listen ADDR   gRPC over h2c (prior knowledge, as the gateway's
//	                                       h2c backends speak it): grpc-go's health service,
//	                                       server reflection and the interop TestService
//	protocols ws-backend --listen ADDR     HTTP/1.1 WebSocket echo (coder/websocket)
//	protocols ws-client --url wss://...    dials the echo over TLS with a client certificate,
//	                                       over HTTP/1.1 Upgrade or (--http2) RFC 8441
//	                                       extended CONNECT, and checks the echo and the
//	                                       identity headers the backend saw
//	protocols grpc-load --target HOST:PORT   unary TestService calls with a client certificate,
//	                                       over many streams, for a fixed time; prints JSON
//	                                       (the compare's gRPC row)
//
// Both backends report the identity headers they received, so the script can check that the
// gateway added its own and dropped the client's copies: the gRPC backend as response header
// metadata (echo-<name>), the WebSocket backend in its first message (a JSON object with the
// request's protocol and headers).
package main

import (
	"context"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// The request headers that carry a client's identity (XFCC and RFC 9440): the backends
// report these back.
var identityHeaders = []string{"x-forwarded-client-cert", "client-cert", "client-cert-chain"}

// A bound against hangs of the client (a gateway that never answers), not a timing check.
const clientTimeout = 30 * time.Second

// The largest WebSocket message either side reads: above the 120 kB one the client sends, so
// that the tunnel carries a message larger than any single buffer on its way.
const wsReadLimit = 1 << 20

func main() {
	log.SetFlags(0)
	log.SetPrefix("protocols: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: protocols grpc-backend|ws-backend|ws-client [flags]")
	}
	var err error
	switch os.Args[1] {
	case "grpc-backend":
		err = grpcBackend(os.Args[2:])
	case "ws-backend":
		err = wsBackend(os.Args[2:])
	case "ws-client":
		err = wsClient(os.Args[2:])
	case "grpc-load":
		err = grpcLoad(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		log.Fatal(err)
	}
}

func listen(mode string, args []string) (net.Listener, error) {
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	addr := fs.String("listen", "127.0.0.1:0", "address to listen on")
	_ = fs.Parse(args)
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return nil, err
	}
	log.Printf("%s listening on %s", mode, lis.Addr())
	return lis, nil
}

// Sends the identity headers a call arrived with back as response header metadata
// (echo-<name>), so a client sees what the backend saw.
func echoIdentity(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for _, name := range identityHeaders {
		if values := md.Get(name); len(values) > 0 {
			out.Set("echo-"+name, values...)
		}
	}
	if out.Len() > 0 {
		_ = grpc.SetHeader(ctx, out)
	}
}

func grpcBackend(args []string) error {
	lis, err := listen("grpc-backend", args)
	if err != nil {
		return err
	}
	server := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			echoIdentity(ctx)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			echoIdentity(ss.Context())
			return h(srv, ss)
		}),
	)
	healthServer := health.NewServer()
	healthServer.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthServer.SetServingStatus(testgrpc.TestService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(server, healthServer)
	testgrpc.RegisterTestServiceServer(server, interop.NewTestServer())
	reflection.Register(server)
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
		server.Stop()
	}()
	// A listener without TLS credentials: grpc-go serves h2c with prior knowledge.
	return server.Serve(lis)
}

// What the WebSocket backend sends first on each connection.
type handshakeReport struct {
	Proto   string      `json:"proto"`
	Host    string      `json:"host"`
	Headers http.Header `json:"headers"`
}

func wsBackend(args []string) error {
	lis, err := listen("ws-backend", args)
	if err != nil {
		return err
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Origin checks are the browser's business; the test client sends none.
		conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			log.Printf("accept: %v", err)
			return
		}
		defer conn.CloseNow()
		conn.SetReadLimit(wsReadLimit)
		ctx := r.Context()
		report, _ := json.Marshal(handshakeReport{Proto: r.Proto, Host: r.Host, Headers: r.Header})
		if err := conn.Write(ctx, websocket.MessageText, report); err != nil {
			return
		}
		for {
			kind, data, err := conn.Read(ctx)
			if err != nil {
				if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
					log.Printf("read: %v", err)
				}
				return
			}
			if err := conn.Write(ctx, kind, data); err != nil {
				return
			}
		}
	})
	return (&http.Server{Handler: handler, ReadHeaderTimeout: clientTimeout}).Serve(lis)
}

func wsClient(args []string) error {
	fs := flag.NewFlagSet("ws-client", flag.ExitOnError)
	rawURL := fs.String("url", "", "wss:// URL to dial")
	certFile := fs.String("cert", "", "client certificate (PEM)")
	keyFile := fs.String("key", "", "client key (PEM)")
	caFile := fs.String("cacert", "", "CA that signed the server certificate (PEM)")
	useHTTP2 := fs.Bool("http2", false, "RFC 8441 extended CONNECT over HTTP/2 instead of an HTTP/1.1 Upgrade")
	expectIdentity := fs.String("expect-identity", "xfcc", "identity the backend must see: xfcc, rfc9440 or none")
	_ = fs.Parse(args)
	if *rawURL == "" || *caFile == "" {
		return errors.New("ws-client needs --url and --cacert")
	}

	tlsConfig, err := clientTLS(*certFile, *keyFile, *caFile)
	if err != nil {
		return err
	}
	var client *http.Client
	if *useHTTP2 {
		tlsConfig.NextProtos = []string{"h2"}
		client = &http.Client{Transport: &extendedConnect{h2: &http2.Transport{TLSClientConfig: tlsConfig}}}
	} else {
		tlsConfig.NextProtos = []string{"http/1.1"}
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	}

	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	// A copy of an identity header sent by the client must not reach the backend.
	forged := http.Header{}
	forged.Set("X-Forwarded-Client-Cert", "Hash=forged-by-the-client")
	forged.Set("Client-Cert", ":Zm9yZ2Vk:")
	conn, resp, err := websocket.Dial(ctx, *rawURL, &websocket.DialOptions{HTTPClient: client, HTTPHeader: forged})
	if err != nil {
		if resp != nil {
			return fmt.Errorf("dial %s: %w (HTTP %s)", *rawURL, err, resp.Status)
		}
		return fmt.Errorf("dial %s: %w", *rawURL, err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(wsReadLimit)

	_, first, err := conn.Read(ctx)
	if err != nil {
		return fmt.Errorf("reading the backend's handshake report: %w", err)
	}
	var report handshakeReport
	if err := json.Unmarshal(first, &report); err != nil {
		return fmt.Errorf("the backend's first message is not its report: %w: %q", err, first)
	}
	if err := checkIdentity(report.Headers, *expectIdentity); err != nil {
		return err
	}

	for _, message := range []struct {
		kind websocket.MessageType
		data []byte
	}{
		{websocket.MessageText, []byte("hello through portcullis")},
		{websocket.MessageBinary, []byte{0, 1, 2, 253, 254, 255}},
		{websocket.MessageText, []byte(strings.Repeat("large frame ", 10000))},
	} {
		if err := conn.Write(ctx, message.kind, message.data); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		kind, data, err := conn.Read(ctx)
		if err != nil {
			return fmt.Errorf("read the echo: %w", err)
		}
		if kind != message.kind || string(data) != string(message.data) {
			return fmt.Errorf("echo differs: sent %v of %d bytes, got %v of %d bytes", message.kind, len(message.data), kind, len(data))
		}
	}
	if err := conn.Close(websocket.StatusNormalClosure, "done"); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	xfcc := report.Headers.Get("X-Forwarded-Client-Cert")
	if len(xfcc) > 40 {
		xfcc = xfcc[:40] + "..."
	}
	fmt.Printf("websocket echo ok over %s (backend saw %s, identity %s: %q)\n",
		map[bool]string{false: "HTTP/1.1 Upgrade", true: "HTTP/2 extended CONNECT"}[*useHTTP2],
		report.Proto, *expectIdentity, xfcc)
	return nil
}

func checkIdentity(headers http.Header, expect string) error {
	for _, name := range identityHeaders {
		for _, value := range headers.Values(name) {
			if strings.Contains(value, "forged") {
				return fmt.Errorf("the client's own %s reached the backend: %q", name, value)
			}
		}
	}
	switch expect {
	case "xfcc":
		if !strings.HasPrefix(headers.Get("X-Forwarded-Client-Cert"), "Hash=") {
			return fmt.Errorf("the backend saw no verified X-Forwarded-Client-Cert (headers: %v)", headers)
		}
	case "rfc9440":
		if !strings.HasPrefix(headers.Get("Client-Cert"), ":") {
			return fmt.Errorf("the backend saw no verified Client-Cert (headers: %v)", headers)
		}
	case "none":
		for _, name := range identityHeaders {
			if headers.Get(name) != "" {
				return fmt.Errorf("the backend saw %s for a client without a certificate", name)
			}
		}
	default:
		return fmt.Errorf("--expect-identity %q: xfcc, rfc9440 or none", expect)
	}
	return nil
}

func clientTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}

// extendedConnect lets coder/websocket (which speaks the HTTP/1.1 handshake) run over RFC 8441:
// its GET Upgrade request becomes an HTTP/2 CONNECT with `:protocol: websocket`, and a 200
// answer becomes the 101 the library expects. RFC 8441 has no Sec-WebSocket-Key/Accept
// exchange, so the accept value is derived here from the library's own key: the check it
// makes then stands for "the server accepted the CONNECT".
type extendedConnect struct {
	h2 *http2.Transport
}

func (t *extendedConnect) RoundTrip(req *http.Request) (*http.Response, error) {
	key := req.Header.Get("Sec-WebSocket-Key")
	headers := req.Header.Clone()
	// Connection-specific fields are malformed in HTTP/2 (RFC 9113 §8.2.2); the key belongs
	// to the HTTP/1.1 handshake only.
	for _, name := range []string{"Connection", "Upgrade", "Sec-WebSocket-Key"} {
		headers.Del(name)
	}
	headers.Set(":protocol", "websocket")
	body, toServer := io.Pipe()
	connect, err := http.NewRequestWithContext(req.Context(), http.MethodConnect, req.URL.String(), body)
	if err != nil {
		return nil, err
	}
	connect.Header = headers
	connect.Host = req.Host
	resp, err := t.h2.RoundTrip(connect)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp, nil
	}
	switched := *resp
	switched.StatusCode = http.StatusSwitchingProtocols
	switched.Status = "101 Switching Protocols (HTTP/2 200)"
	switched.Header = resp.Header.Clone()
	switched.Header.Set("Connection", "Upgrade")
	switched.Header.Set("Upgrade", "websocket")
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	switched.Header.Set("Sec-WebSocket-Accept", base64.StdEncoding.EncodeToString(sum[:]))
	switched.Body = &connectStream{ReadCloser: resp.Body, toServer: toServer}
	return &switched, nil
}

// The two halves of an extended CONNECT stream as one io.ReadWriteCloser.
type connectStream struct {
	io.ReadCloser
	toServer *io.PipeWriter
}

func (s *connectStream) Write(p []byte) (int, error) { return s.toServer.Write(p) }

func (s *connectStream) Close() error {
	_ = s.toServer.Close()
	return s.ReadCloser.Close()
}

// What grpc-load prints: the calls that returned OK over the measured seconds, and the others
// by gRPC status code.
type loadReport struct {
	OK      int64            `json:"ok"`
	Errors  map[string]int64 `json:"errors"`
	Seconds float64          `json:"seconds"`
	Rate    float64          `json:"rate"`
}

// grpcLoad runs small unary calls (TestService/UnaryCall, a 16-byte payload each way) on
// --connections connections with --streams calls in flight on each, for --duration.
func grpcLoad(args []string) error {
	fs := flag.NewFlagSet("grpc-load", flag.ExitOnError)
	target := fs.String("target", "", "HOST:PORT of the gateway")
	serverName := fs.String("servername", "", "TLS server name and :authority (default: the target's host)")
	certFile := fs.String("cert", "", "client certificate (PEM)")
	keyFile := fs.String("key", "", "client key (PEM)")
	caFile := fs.String("cacert", "", "CA that signed the server certificate (PEM)")
	connections := fs.Int("connections", 4, "HTTP/2 connections")
	streams := fs.Int("streams", 100, "calls in flight per connection")
	duration := fs.Duration("duration", 10*time.Second, "how long to call")
	_ = fs.Parse(args)
	if *target == "" || *caFile == "" {
		return errors.New("grpc-load needs --target and --cacert")
	}
	tlsConfig, err := clientTLS(*certFile, *keyFile, *caFile)
	if err != nil {
		return err
	}
	if *serverName != "" {
		tlsConfig.ServerName = *serverName
	}
	clients := make([]testgrpc.TestServiceClient, *connections)
	for i := range clients {
		// WithAuthority as well as the TLS name: both say which host the calls are for.
		options := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig.Clone()))}
		if *serverName != "" {
			options = append(options, grpc.WithAuthority(*serverName))
		}
		conn, err := grpc.NewClient("passthrough:///"+*target, options...)
		if err != nil {
			return err
		}
		defer conn.Close()
		clients[i] = testgrpc.NewTestServiceClient(conn)
	}
	request := &testgrpc.SimpleRequest{ResponseSize: 16, Payload: &testgrpc.Payload{Body: make([]byte, 16)}}

	var ok atomic.Int64
	var mu sync.Mutex
	failed := map[string]int64{}
	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for _, client := range clients {
		for range *streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					_, err := client.UnaryCall(ctx, request)
					if err == nil {
						ok.Add(1)
						continue
					}
					// The deadline cut this call short: not the server's failure. The clock is
					// read too, because ctx.Err() waits for the context's timer, which runs late
					// on a load CPU this busy, while calls already fail on the deadline.
					if deadline, _ := ctx.Deadline(); ctx.Err() != nil || !time.Now().Before(deadline) {
						return
					}
					mu.Lock()
					failed[status.Code(err).String()]++
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	report, _ := json.Marshal(loadReport{OK: ok.Load(), Errors: failed, Seconds: seconds, Rate: float64(ok.Load()) / seconds})
	fmt.Println(string(report))
	return nil
}
