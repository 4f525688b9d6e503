// The upstream Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance, the version
// in go.mod), run against Portcullis. scripts/conformance builds this once with `go test -c` and
// runs it against the cluster of scripts/test-cluster; see docs/conformance/README.md.
//
// What Portcullis claims is fixed here, not on the command line, so that every report states the
// same claim: gateway class `portcullis`, profile GATEWAY-HTTP, the features in claimedFeatures
// (the profile adds its Core features itself). The upstream flags still work for everything else
// (--run-test, --skip-tests, --report-output, --version, --debug, ...), and an explicitly given
// --gateway-class, --supported-features or --conformance-profiles overrides the claim.
package conformance

import (
	"flag"
	"testing"

	"k8s.io/apimachinery/pkg/util/sets"
	"sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
)

const gatewayClass = "portcullis"

// Extended features Portcullis claims on top of the profile's Core ones. Only features whose
// tests pass belong here; an extra one is tried with
// `--supported-features Gateway,ReferenceGrant,HTTPRoute,NAME`.
var claimedFeatures = []features.FeatureName{
	features.SupportGateway,
	features.SupportReferenceGrant,
	features.SupportHTTPRoute,
}

var claimedImplementation = confv1.Implementation{
	Organization: "portcullis-dev",
	Project:      "portcullis",
	URL:          "https://github.com/portcullis-dev/portcullis",
	Contact:      []string{"https://github.com/portcullis-dev/portcullis/blob/main/docs/conformance/README.md"},
}

func TestConformance(t *testing.T) {
	opts := conformance.DefaultOptions(t)

	explicit := sets.New[string]()
	flag.Visit(func(f *flag.Flag) { explicit.Insert(f.Name) })

	if !explicit.Has("gateway-class") {
		opts.GatewayClassName = gatewayClass
	}
	if !explicit.Has("conformance-profiles") {
		opts.ConformanceProfiles = []suite.ConformanceProfileName{suite.GatewayHTTPConformanceProfileName}
	}
	if !explicit.Has("supported-features") {
		opts.SupportedFeatures = claimedFeatures
	}
	if !explicit.Has("organization") {
		opts.Implementation.Organization = claimedImplementation.Organization
	}
	if !explicit.Has("project") {
		opts.Implementation.Project = claimedImplementation.Project
	}
	if !explicit.Has("url") {
		opts.Implementation.URL = claimedImplementation.URL
	}
	if !explicit.Has("contact") {
		opts.Implementation.Contact = claimedImplementation.Contact
	}
	// --version is the workspace's (scripts/conformance reads it from Cargo.toml); with
	// --report-output, the suite refuses to run without it.
	// The suite records a test's result when t.Run returns, which for a parallel test is when it
	// pauses, before it ran: every parallel test would be reported as passed (v1.6.1,
	// utils/suite/suite.go Run). Run them all in sequence so that the report is true.
	for i := range tests.ConformanceTests {
		tests.ConformanceTests[i].Parallel = false
	}

	conformance.RunConformanceWithOptions(t, opts)
}
