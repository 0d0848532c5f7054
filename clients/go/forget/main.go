// Command forget asks Lethe to forget training examples of a model, follows the request to
// its end and downloads the new version, checked: docs/clients.md's conventions in Go.
//
//	LETHE_TOKEN=... forget -coordinator 127.0.0.1:50051 -model fashion -forget 17,2041 \
//	    -request-id gdpr-4711 -out fashion-v1.safetensors
//
// The lethe.v1 package is generated from proto/lethe/v1 (scripts/check-go-example.sh shows
// how); google.longrunning and google.rpc come from genproto. It is written against the Go
// packages Debian bookworm ships (grpc-go 1.33, genproto 2020); with current modules,
// longrunningpb replaces genproto's longrunning and anypb.UnmarshalTo the unpack below.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/runtime/protoimpl"

	lethev1 "lethe.dev/lethe/v1"
)

func main() {
	coordinator := flag.String("coordinator", "127.0.0.1:50051", "the coordinator, host:port")
	model := flag.String("model", "", "the model's id")
	forget := flag.String("forget", "", "training indices to forget, comma-separated")
	requestID := flag.String("request-id", "", "idempotency key: a retry with it returns the same operation")
	out := flag.String("out", "model.safetensors", "where to write the new version's checkpoint")
	flag.Parse()

	var indices []int64
	for _, field := range strings.Split(*forget, ",") {
		index, err := strconv.ParseInt(strings.TrimSpace(field), 10, 64)
		if err != nil {
			log.Fatalf("-forget: %q is not an index", field)
		}
		indices = append(indices, index)
	}
	conn, err := grpc.Dial(*coordinator, grpc.WithInsecure(),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(messages{})))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	// Every call carries the tenant's token; it names the tenant.
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"authorization", "Bearer "+os.Getenv("LETHE_TOKEN"))
	lethe := lethev1.NewLetheClient(conn)

	operation, err := lethe.CreateDeletionRequest(ctx, &lethev1.CreateDeletionRequestRequest{
		RequestId: *requestID,
		Model:     "models/" + *model,
		Forget:    indices,
	})
	if err != nil {
		fail(err)
	}
	// WatchOperation sends the operation each time it changes and ends when it is done (or
	// after an hour: watch again).
	for !operation.GetDone() {
		stream, err := lethe.WatchOperation(ctx, &lethev1.WatchOperationRequest{Name: operation.GetName()})
		if err != nil {
			fail(err)
		}
		for {
			next, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				fail(err)
			}
			operation = next
			var progress lethev1.OperationMetadata
			if err := unpack(operation.GetMetadata(), &progress); err == nil {
				fmt.Printf("%s %s %.0f%%\n", operation.GetName(), progress.GetState(), 100*progress.GetProgress())
			}
		}
	}
	if failure := operation.GetError(); failure != nil {
		log.Fatalf("%s failed: %s (code %d)", operation.GetName(), failure.GetMessage(), failure.GetCode())
	}
	var result lethev1.DeletionResult
	if err := unpack(operation.GetResponse(), &result); err != nil {
		log.Fatal(err)
	}
	version := result.GetVersion()
	fmt.Printf("%s: %d examples forgotten in all\n", version.GetName(), version.GetForgottenCount())
	if err := download(ctx, lethe, version.GetName(), *out); err != nil {
		log.Fatal(err)
	}
}

// messages is the gRPC codec for today's generated messages and genproto's older ones alike.
// grpc-go 1.33's default codec uses the old protobuf runtime, which cannot decode a message
// that today's protoc-gen-go wrote (DownloadModelVersion's chunks); grpc-go 1.35 and later
// need none of this.
type messages struct{}

func (messages) Marshal(v interface{}) ([]byte, error) {
	return proto.Marshal(protoimpl.X.ProtoMessageV2Of(v))
}

func (messages) Unmarshal(data []byte, v interface{}) error {
	return proto.Unmarshal(data, protoimpl.X.ProtoMessageV2Of(v))
}

func (messages) Name() string { return "proto" }

// packed is what genproto's google.protobuf.Any and anypb.Any both are.
type packed interface {
	GetTypeUrl() string
	GetValue() []byte
}

// unpack reads an Any holding message m's type: Lethe's responses and metadata are typed,
// never JSON. (anypb.UnmarshalTo does this with current modules.)
func unpack(any packed, m proto.Message) error {
	want := string(m.ProtoReflect().Descriptor().FullName())
	got := any.GetTypeUrl()[strings.LastIndex(any.GetTypeUrl(), "/")+1:]
	if got != want {
		return fmt.Errorf("got a %s, not a %s", got, want)
	}
	return proto.Unmarshal(any.GetValue(), m)
}

// download streams a version's checkpoint into path and keeps it only if its SHA-256 is the
// one the coordinator sent and the one recorded.
func download(ctx context.Context, lethe lethev1.LetheClient, name, path string) error {
	stream, err := lethe.DownloadModelVersion(ctx, &lethev1.DownloadModelVersionRequest{Name: name})
	if err != nil {
		return err
	}
	partial := path + ".partial"
	file, err := os.Create(partial)
	if err != nil {
		return err
	}
	defer os.Remove(partial)
	hash := sha256.New()
	var recorded, sent []byte
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			file.Close()
			return err
		}
		if chunk.GetVersion() != nil {
			recorded = chunk.GetVersion().GetSha256()
		}
		hash.Write(chunk.GetData())
		if _, err := file.Write(chunk.GetData()); err != nil {
			file.Close()
			return err
		}
		if len(chunk.GetSha256()) > 0 {
			sent = chunk.GetSha256()
		}
	}
	if err := file.Close(); err != nil {
		return err
	}
	got := hash.Sum(nil)
	if !bytes.Equal(got, sent) || (len(recorded) > 0 && !bytes.Equal(got, recorded)) {
		return fmt.Errorf("%s arrived with SHA-256 %x, not the recorded one", name, got)
	}
	fmt.Printf("%s (sha256 %x) -> %s\n", name, got, path)
	return os.Rename(partial, path)
}

// fail prints a refusal with the field BadRequest names, when it names one.
func fail(err error) {
	refusal := status.Convert(err)
	for _, detail := range refusal.Details() {
		if bad, ok := detail.(*errdetails.BadRequest); ok {
			for _, violation := range bad.GetFieldViolations() {
				log.Printf("field %s: %s", violation.GetField(), violation.GetDescription())
			}
		}
	}
	log.Fatalf("%s: %s", refusal.Code(), refusal.Message())
}
