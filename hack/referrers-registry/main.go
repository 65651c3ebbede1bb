// referrers-registry serves go-containerregistry's in-memory OCI registry with the OCI 1.1
// referrers API switched on. The Debian distribution registry lacks that API, so tests use
// this one to exercise the native `GET /v2/<repo>/referrers/<digest>` path with real cosign.
//
//	referrers-registry --address 127.0.0.1:5000
package main

import (
	"flag"
	"log"
	"net"
	"net/http"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	address := flag.String("address", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	listener, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatalf("listen %s: %v", *address, err)
	}
	log.Printf("serving on %s", listener.Addr())
	handler := registry.New(registry.WithReferrersSupport(true))
	log.Fatal(http.Serve(listener, handler))
}
