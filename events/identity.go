package events

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// Who may report a result. Every event on JETCI_RESULTS carries a signature in
// its SigHeader, over the exact bytes of the message:
//
//   - "runner NAME SIG": a runner's, made with its identity (an ed25519 nkey
//     whose seed only that runner holds; SIG is base64url). NAME is the
//     identity's registered name: the event's runner id must be NAME or start
//     with NAME + "-" (the runners of a pool share the pool's identity).
//   - "svc SIG": a service's (dispatcher, reporter): HMAC-SHA256 with the
//     service key, a secret the admin's set-up keeps in BucketKeys, which the
//     runner role may not read.
//
// BucketKeys is written by the admin only (jetci setup): KeyService and one
// RunnerKeyName(NAME) per runner identity (its public key). A NATS password
// alone therefore cannot make a result the reporter accepts.
const (
	BucketKeys = "jetci-keys"
	KeyService = "service"
	SigHeader  = "Jetci-Sig"
)

var identityRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,80}$`)

var idSanitize = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// IdentityName is the default identity name of a runner id: the id with
// every run of other characters than letters, digits, '_' and '-' made "-".
func IdentityName(runnerID string) string { return idSanitize.ReplaceAllString(runnerID, "-") }

// ValidIdentity checks a runner identity's name: letters, digits, '_' and '-'.
func ValidIdentity(name string) error {
	if !identityRE.MatchString(name) {
		return fmt.Errorf("invalid runner identity %q: use letters, digits, '_' and '-' (at most 80)", name)
	}
	return nil
}

// RunnerKeyName is the key of a runner identity's public key in BucketKeys.
func RunnerKeyName(name string) string { return "runner." + name }

// ErrForged marks an event whose signature is missing, wrong, or made by
// someone not allowed to say what it says.
var ErrForged = errors.New("forged")

// NewServiceKey makes a fresh service key.
func NewServiceKey() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}

// SignService signs data with the service key.
func SignService(key, data []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return "svc " + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// SignRunner signs data with a runner identity registered as name.
func SignRunner(kp nkeys.KeyPair, name string, data []byte) (string, error) {
	sig, err := kp.Sign(data)
	if err != nil {
		return "", err
	}
	return "runner " + name + " " + base64.RawURLEncoding.EncodeToString(sig), nil
}

// Signature is a parsed SigHeader.
type Signature struct {
	Service bool   // made with the service key
	Name    string // the runner identity, when not Service
	Sig     []byte
}

// ParseSignature parses a SigHeader value.
func ParseSignature(h string) (Signature, error) {
	f := strings.Split(h, " ")
	var s Signature
	var b64 string
	switch {
	case len(f) == 2 && f[0] == "svc":
		s.Service, b64 = true, f[1]
	case len(f) == 3 && f[0] == "runner" && ValidIdentity(f[1]) == nil:
		s.Name, b64 = f[1], f[2]
	case h == "":
		return s, fmt.Errorf("%w: no %s header", ErrForged, SigHeader)
	default:
		return s, fmt.Errorf("%w: malformed %s header", ErrForged, SigHeader)
	}
	sig, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil || len(sig) == 0 || len(sig) > 128 {
		return s, fmt.Errorf("%w: malformed signature", ErrForged)
	}
	s.Sig = sig
	return s, nil
}

// IdentityCovers reports whether identity name may speak for runner id.
func IdentityCovers(name, runnerID string) bool {
	return runnerID == name || strings.HasPrefix(runnerID, name+"-")
}

// Keys verifies signatures against BucketKeys, which it watches, so a key
// registered or revoked by the admin takes effect at once.
type Keys struct {
	mu      sync.RWMutex
	service []byte
	runners map[string]nkeys.KeyPair // name → public key
	ready   chan struct{}
	err     error
	kv      jetstream.KeyValue // to look up a runner key the watch has not brought yet
}

// OpenKeys loads the keys bucket and keeps watching it until ctx ends.
func OpenKeys(ctx context.Context, js jetstream.JetStream) (*Keys, error) {
	kv, err := js.KeyValue(ctx, BucketKeys)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w (run 'jetci setup' as the admin)", BucketKeys, err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", BucketKeys, err)
	}
	k := &Keys{runners: map[string]nkeys.KeyPair{}, ready: make(chan struct{}), kv: kv}
	go func() {
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					close(k.ready)
					continue
				}
				k.apply(e)
			}
		}
	}()
	select {
	case <-k.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.service == nil {
		return nil, fmt.Errorf("%s has no %q key: run 'jetci setup' as the admin", BucketKeys, KeyService)
	}
	return k, nil
}

func (k *Keys) apply(e jetstream.KeyValueEntry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	del := e.Operation() != jetstream.KeyValuePut
	switch key := e.Key(); {
	case key == KeyService:
		if !del {
			if b, err := base64.StdEncoding.DecodeString(string(e.Value())); err == nil && len(b) >= 16 {
				k.service = b
			}
		}
	case strings.HasPrefix(key, "runner."):
		name := strings.TrimPrefix(key, "runner.")
		if del {
			delete(k.runners, name)
			return
		}
		if kp, err := nkeys.FromPublicKey(strings.TrimSpace(string(e.Value()))); err == nil {
			k.runners[name] = kp
		}
	}
}

// lookup reads a runner identity's key from the bucket. It is used for this
// check only, not kept: the watch brings it (or its revocation) in order.
func (k *Keys) lookup(name string) (nkeys.KeyPair, bool) {
	if k.kv == nil {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := k.kv.Get(ctx, RunnerKeyName(name))
	if err != nil {
		return nil, false
	}
	kp, err := nkeys.FromPublicKey(strings.TrimSpace(string(e.Value())))
	return kp, err == nil
}

// ServiceKey returns the service key, for signing.
func (k *Keys) ServiceKey() []byte {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.service
}

// Verify checks the signature header of a result event. runnerID is the
// event's runner field ("" for events only services make). It returns who
// signed: "service" or "runner NAME".
func (k *Keys) Verify(data []byte, header, runnerID string) (string, error) {
	s, err := ParseSignature(header)
	if err != nil {
		return "", err
	}
	k.mu.RLock()
	service := k.service
	kp, ok := k.runners[s.Name]
	k.mu.RUnlock()
	if s.Service {
		m := hmac.New(sha256.New, service)
		m.Write(data)
		if service == nil || !hmac.Equal(m.Sum(nil), s.Sig) {
			return "", fmt.Errorf("%w: bad service signature", ErrForged)
		}
		return "service", nil
	}
	if !ok {
		// Registered a moment ago, the watch may not have brought it yet
		// (a runner's first result can follow its registration by
		// milliseconds): the bucket says.
		kp, ok = k.lookup(s.Name)
	}
	if !ok {
		return "", fmt.Errorf("%w: runner identity %q is not registered", ErrForged, s.Name)
	}
	if err := kp.Verify(data, s.Sig); err != nil {
		return "", fmt.Errorf("%w: bad signature of runner identity %q", ErrForged, s.Name)
	}
	if !IdentityCovers(s.Name, idSanitize.ReplaceAllString(runnerID, "-")) {
		return "", fmt.Errorf("%w: runner identity %q may not speak for runner %q", ErrForged, s.Name, runnerID)
	}
	return "runner " + s.Name, nil
}

// Signer signs what a process publishes on the results subjects.
type Signer func(data []byte) (string, error)

// ServiceSigner signs with the service key in keys.
func ServiceSigner(keys *Keys) Signer {
	return func(data []byte) (string, error) {
		k := keys.ServiceKey()
		if k == nil {
			return "", errors.New("no service key")
		}
		return SignService(k, data), nil
	}
}

// RunnerSigner signs with a runner identity. The private key is expanded
// from the seed once, not for every signature as KeyPair.Sign does (that
// was half of a runner's signing CPU); the signature is the same.
func RunnerSigner(kp nkeys.KeyPair, name string) Signer {
	if seed, err := kp.Seed(); err == nil {
		if _, raw, err := nkeys.DecodeSeed(seed); err == nil && len(raw) == ed25519.SeedSize {
			priv := ed25519.NewKeyFromSeed(raw)
			return func(data []byte) (string, error) {
				return "runner " + name + " " + base64.RawURLEncoding.EncodeToString(ed25519.Sign(priv, data)), nil
			}
		}
	}
	return func(data []byte) (string, error) { return SignRunner(kp, name, data) }
}

// SigningJetStream wraps js so that every publish to a results subject
// carries sign's signature; other publishes go through unchanged. The
// dispatcher, the reporter and the runners publish through one.
func SigningJetStream(js jetstream.JetStream, sign Signer) jetstream.JetStream {
	return &signingJS{JetStream: js, sign: sign}
}

type signingJS struct {
	jetstream.JetStream
	sign Signer
}

func (s *signingJS) signed(subject string, data []byte) (*nats.Msg, error) {
	m := nats.NewMsg(subject)
	m.Data = data
	if strings.HasPrefix(subject, SubjectResults+".") {
		sig, err := s.sign(data)
		if err != nil {
			return nil, fmt.Errorf("sign result: %w", err)
		}
		m.Header.Set(SigHeader, sig)
	}
	return m, nil
}

func (s *signingJS) Publish(ctx context.Context, subject string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	m, err := s.signed(subject, data)
	if err != nil {
		return nil, err
	}
	return s.JetStream.PublishMsg(ctx, m, opts...)
}

func (s *signingJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	m, err := s.signed(msg.Subject, msg.Data)
	if err != nil {
		return nil, err
	}
	for k, v := range msg.Header {
		m.Header[k] = append(m.Header[k], v...)
	}
	m.Reply = msg.Reply
	return s.JetStream.PublishMsg(ctx, m, opts...)
}

func (s *signingJS) PublishAsync(subject string, data []byte, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	m, err := s.signed(subject, data)
	if err != nil {
		return nil, err
	}
	return s.JetStream.PublishMsgAsync(m, opts...)
}

func (s *signingJS) PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	m, err := s.signed(msg.Subject, msg.Data)
	if err != nil {
		return nil, err
	}
	for k, v := range msg.Header {
		m.Header[k] = append(m.Header[k], v...)
	}
	return s.JetStream.PublishMsgAsync(m, opts...)
}

// EnsureKeys creates BucketKeys with a fresh service key when it does not
// exist (the admin's set-up); an existing bucket is left as it is, so the
// other roles, which may not read the key, can run it too.
func EnsureKeys(ctx context.Context, js jetstream.JetStream, s Setup) error {
	_, err := js.KeyValue(ctx, BucketKeys)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("bucket %s: %w", BucketKeys, err)
	}
	kv, err := js.CreateKeyValue(ctx, s.keysConfig())
	if errors.Is(err, jetstream.ErrBucketExists) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", BucketKeys, err)
	}
	return EnsureServiceKey(ctx, kv)
}

func (s Setup) keysConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: BucketKeys,
		Description: "who may report results: the service key and the runner identities' public keys",
		Storage:     s.Storage, Replicas: s.Replicas, History: 1}
}

// EnsureServiceKey makes the service key if the keys bucket has none (the
// admin only: jetci setup runs it on every call).
func EnsureServiceKey(ctx context.Context, kv jetstream.KeyValue) error {
	_, err := kv.Create(ctx, KeyService, []byte(base64.StdEncoding.EncodeToString(NewServiceKey())))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("create the service key: %w", err)
	}
	return nil
}

// RegisterRunner stores the public key of a runner identity (admin, or any
// client of an open server such as jetci up's).
func RegisterRunner(ctx context.Context, js jetstream.JetStream, name string, kp nkeys.KeyPair) error {
	if err := ValidIdentity(name); err != nil {
		return err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return err
	}
	kv, err := js.KeyValue(ctx, BucketKeys)
	if err != nil {
		return fmt.Errorf("open %s: %w", BucketKeys, err)
	}
	_, err = kv.Put(ctx, RunnerKeyName(name), []byte(pub))
	return err
}

// LazyServiceSigner signs with the service key, read from BucketKeys at the
// first signature (and again after a failed read).
func LazyServiceSigner(js jetstream.JetStream) Signer {
	var mu sync.Mutex
	var key []byte
	return func(data []byte) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if key == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			kv, err := js.KeyValue(ctx, BucketKeys)
			if err != nil {
				return "", fmt.Errorf("open %s: %w (run 'jetci setup' as the admin)", BucketKeys, err)
			}
			e, err := kv.Get(ctx, KeyService)
			if err != nil {
				return "", fmt.Errorf("read the service key: %w", err)
			}
			k, err := base64.StdEncoding.DecodeString(string(e.Value()))
			if err != nil || len(k) < 16 {
				return "", fmt.Errorf("the service key in %s is malformed", BucketKeys)
			}
			key = k
		}
		return SignService(key, data), nil
	}
}
