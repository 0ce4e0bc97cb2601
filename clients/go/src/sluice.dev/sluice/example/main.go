// An example client of Sluice's gRPC API on the generated Go stubs (../gen/): it streams
// Generate, reads an error's google.rpc.ErrorInfo, and cancels a stream mid-way.
// Usage: example [host:port of the Envoy edge or the router] [api key]
// tests/docs/test_go_client.py builds and runs it against a live suite and checks the
// JSON it prints.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	commonv1 "sluice.dev/sluice/gen/sluice/common/v1"
	routerv1 "sluice.dev/sluice/gen/sluice/router/v1"
)

type errorReport struct {
	Code   string `json:"code"`
	Reason string `json:"reason"`
	Domain string `json:"domain"`
}

type cancelReport struct {
	Received   int32  `json:"received"`
	CancelCode string `json:"cancelCode"`
}

type report struct {
	Kinds        []string     `json:"kinds"`
	Text         string       `json:"text"`
	OutputTokens int32        `json:"outputTokens"`
	Error        errorReport  `json:"error"`
	Cancel       cancelReport `json:"cancel"`
}

func kind(event *routerv1.GenerateEvent) string {
	switch event.Event.(type) {
	case *routerv1.GenerateEvent_Metadata:
		return "metadata"
	case *routerv1.GenerateEvent_Data:
		return "data"
	case *routerv1.GenerateEvent_Progress:
		return "progress"
	case *routerv1.GenerateEvent_Error:
		return "error"
	case *routerv1.GenerateEvent_Complete:
		return "complete"
	case *routerv1.GenerateEvent_ToolCall:
		return "toolCall"
	}
	return "none"
}

func request(maxTokens int32) *routerv1.GenerateRequest {
	return &routerv1.GenerateRequest{
		Model:     "default",
		Messages:  []*commonv1.Message{{Role: "user", Content: "Tell me about sluices"}},
		MaxTokens: maxTokens,
	}
}

func withKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

func run(address, key string) (*report, error) {
	ctx, cancelAll := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancelAll()
	conn, err := grpc.DialContext(ctx, address, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	defer conn.Close()
	client := routerv1.NewRouterServiceClient(conn)
	out := &report{Kinds: []string{}}

	// 1. Stream one answer: metadata, data and progress events, then one complete.
	stream, err := client.Generate(withKey(ctx, key), request(8))
	if err != nil {
		return nil, err
	}
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("stream: %w", err)
		}
		out.Kinds = append(out.Kinds, kind(event))
		if data := event.GetData(); data != nil {
			out.Text += data.Text
		}
		if done := event.GetComplete(); done != nil {
			out.OutputTokens = done.GetUsage().GetOutputTokens()
		}
	}

	// 2. An error before the first event is a gRPC status; its details say why.
	failing, err := client.Generate(withKey(ctx, "sk-wrong"), request(8))
	if err == nil {
		_, err = failing.Recv()
	}
	if err == nil {
		return nil, errors.New("a wrong key was accepted")
	}
	failure := status.Convert(err)
	out.Error.Code = fmt.Sprint(int(failure.Code()))
	for _, detail := range failure.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			out.Error.Reason, out.Error.Domain = info.Reason, info.Domain
		}
	}

	// 3. Cancel mid-stream: cancel the call after three tokens of a long answer.
	callCtx, cancelCall := context.WithCancel(withKey(ctx, key))
	defer cancelCall()
	long, err := client.Generate(callCtx, request(400))
	if err != nil {
		return nil, err
	}
	for {
		event, err := long.Recv()
		if err != nil {
			if code := status.Code(err); code != codes.OK {
				out.Cancel.CancelCode = fmt.Sprint(int(code))
			}
			break
		}
		if data := event.GetData(); data != nil {
			out.Cancel.Received += data.TokenCount
		}
		if out.Cancel.Received >= 3 {
			cancelCall()
		}
	}
	return out, nil
}

func main() {
	address, key := "localhost:8080", "sk-sluice-dev"
	if len(os.Args) > 1 {
		address = os.Args[1]
	}
	if len(os.Args) > 2 {
		key = os.Args[2]
	}
	out, err := run(address, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	encoded, _ := json.Marshal(out)
	fmt.Println(string(encoded))
}
