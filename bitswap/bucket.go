package bitswap

import "time"

// tokenBucket is a plain token bucket on a clock the caller passes in.
type tokenBucket struct {
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	at     time.Time
}

func newTokenBucket(rate float64, burst int, now time.Time) tokenBucket {
	return tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst), at: now}
}

// take spends one token if there is one.
func (b *tokenBucket) take(now time.Time) bool {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
		b.at = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
