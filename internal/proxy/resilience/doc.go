// Package resilience owns the proxy's request-path resilience primitives,
// with Envoy's semantics: when a failed attempt may be retried (RetryOn,
// ShouldRetry), how long to wait before it (Backoff), how many retries a
// cluster may add to its load (Budget), per-cluster circuit-breaker limits
// (Breaker) and passive outlier detection per endpoint (Detector).
//
// It does no I/O, starts no goroutine of its own (Detector.Run is run by its
// owner) and knows nothing about listeners, routes, balancers or
// configuration sources: the proxy builds these values from its snapshot,
// consults them on the request path and feeds ejections into its balancer
// through the small Ejector interface. Active health checking lives in
// package healthcheck.
//
// Every request-path operation is a handful of atomic operations and does
// not allocate (see the benchmarks); configuration changes build new values
// or update thresholds in place.
//
// One request with retries, as the proxy is expected to drive it (retry
// policy, budget, breaker, backoff and detector all belong to the route's
// cluster):
//
//	budget.Request()
//	if !breaker.TryAcquire(resilience.Requests) {
//		return overflow() // 503 with response flag "UO"
//	}
//	defer breaker.Release(resilience.Requests)
//	for retry := 0; ; retry++ {
//		ep := pick()
//		status, grpcStatus, failure := attempt(ctx, ep)
//		detector.Report(ep.Address, resilience.ResultOf(status, failure))
//		if retry > 0 {
//			breaker.Release(resilience.Retries) // this retry has ended
//		}
//		if retry == maxRetries || !resilience.ShouldRetry(retryOn, status, grpcStatus, failure) {
//			return respond() // with this attempt's outcome
//		}
//		if !breaker.TryAcquire(resilience.Retries) {
//			return respond()
//		}
//		if !budget.TryRetry() {
//			breaker.Release(resilience.Retries)
//			return respond()
//		}
//		wait(ctx, backoff.Delay(retry+1)) // a timer, abandoned when ctx ends
//	}
//
// The gRPC status of an attempt comes from its trailers, or from its headers
// for a trailers-only response: GRPCStatus(trailer, header).
//
// Outlier detection for a cluster:
//
//	d, err := resilience.NewDetector(resilience.DefaultDetectorConfig())
//	d.Update(map[string]resilience.Ejector{ep.Address: ep, ...}) // on EDS change
//	go d.Run(ctx)                                                // periodic sweep
package resilience
