// The HTTP/2 suite's Go gRPC server (grpc-go from Debian's golang-google-grpc-dev, built in
// GOPATH mode with GOPATH=/usr/share/gocode; raw bytes, no generated code): `grpc_server`
// listens on 127.0.0.1 (an ephemeral port, printed as the first line) and serves
// `demo.Greeter`:
//
//	Say    (unary) answers "hello " + request;
//	Relay  (unary) with GRPC_RELAY_PORT set: waits 0-4 ms (work before the call, so that
//	       concurrent handlers call downstream in any order), calls GRPC_RELAY_METHOD (Say
//	       or Relay) of the server on 127.0.0.1:GRPC_RELAY_PORT with the same request and
//	       x-request-id, over one client connection (dialed at the first call), and
//	       answers its answer (or its status).
package main

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// rawCodec passes messages as they are: the handlers see and return bytes. Named "proto"
// so that calls carry the usual `application/grpc+proto` content type.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string   { return "proto" }
func (rawCodec) String() string { return "proto" }

// The downstream connection, dialed at the first Relay call (as grpcio and grpc-js
// connect lazily): a connection opened before a tracer starts cannot be decoded.
var (
	relayPort   = os.Getenv("GRPC_RELAY_PORT")
	relayMethod = "/demo.Greeter/Say"
	dialOnce    sync.Once
	downstream  *grpc.ClientConn
	dialErr     error
)

func unary(f func(ctx context.Context, in []byte) ([]byte, error)) func(interface{}, context.Context, func(interface{}) error, grpc.UnaryServerInterceptor) (interface{}, error) {
	return func(_ interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
		var in []byte
		if err := dec(&in); err != nil {
			return nil, err
		}
		out, err := f(ctx, in)
		if err != nil {
			return nil, err
		}
		return &out, nil
	}
}

func say(_ context.Context, in []byte) ([]byte, error) {
	return append([]byte("hello "), in...), nil
}

func relay(ctx context.Context, in []byte) ([]byte, error) {
	if relayPort == "" {
		return nil, status.Error(codes.Unimplemented, "GRPC_RELAY_PORT is not set")
	}
	dialOnce.Do(func() {
		downstream, dialErr = grpc.Dial("127.0.0.1:"+relayPort, grpc.WithInsecure())
	})
	if dialErr != nil {
		return nil, status.Error(codes.Unavailable, dialErr.Error())
	}
	out := metadata.MD{}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		out.Set("x-request-id", md.Get("x-request-id")...)
	}
	time.Sleep(time.Duration(rand.Int63n(int64(4 * time.Millisecond))))
	call, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), out), 20*time.Second)
	defer cancel()
	var answer []byte
	if err := downstream.Invoke(call, relayMethod, &in, &answer, grpc.ForceCodec(rawCodec{})); err != nil {
		return nil, err
	}
	return answer, nil
}

func main() {
	if m := os.Getenv("GRPC_RELAY_METHOD"); m != "" {
		relayMethod = "/demo.Greeter/" + m
	}
	s := grpc.NewServer(grpc.CustomCodec(rawCodec{}))
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: "demo.Greeter",
		HandlerType: (*interface{})(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Say", Handler: unary(say)},
			{MethodName: "Relay", Handler: unary(relay)},
		},
	}, struct{}{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	panic(s.Serve(ln))
}
