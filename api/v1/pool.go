package v1

import "time"

// Roles of a host in the manager (Host.Role, JoinAnswer.Role).
const (
	RoleMember   = "member"   // runs a voting member of the pool's etcd cluster
	RoleLearner  = "learner"  // an etcd member that has not caught up yet
	RoleClient   = "client"   // reaches the members' etcd over mTLS
	RoleExternal = "external" // uses an external etcd cluster (serve --etcd-endpoints)
)

// JoinTokenRequest asks for a join token (POST /api/v1/pool/join-tokens).
type JoinTokenRequest struct {
	// TTLSeconds is how long the token stays valid: 1 s to 24 h; 0 is
	// 10 minutes.
	TTLSeconds int `json:"ttlSeconds,omitempty"`
}

// JoinToken is a new join token: pass it to `hangar serve --join ADDR
// --token TOKEN` on the joining host. It is shown once; the pool keeps
// only a digest of its secret.
type JoinToken struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
}

// JoinRequest is what a joining host sends (POST /api/v1/pool/join, the
// only route the TLS listener serves without a client certificate).
type JoinRequest struct {
	// Token is the join token (it authenticates the request).
	Token string `json:"token"`
	// Host is the joining host's name (a DNS label not yet in the pool).
	Host string `json:"host"`
	// CSR is a PEM certificate request signed by the joiner's own key; its
	// IP SANs are the host's addresses (at least the --listen IP).
	CSR string `json:"csr"`
	// Address is the joiner's --listen address (IP:port).
	Address string `json:"address"`
	// PeerURL is the joiner's etcd peer URL, https://<listen IP>:2380 by
	// default, used if it becomes an etcd member.
	PeerURL string `json:"peerURL"`
	// ClientURL is the joiner's etcd client URL, used if it becomes a member.
	ClientURL string `json:"clientURL"`
	// External: the joiner uses an external etcd cluster (--etcd-endpoints).
	External bool `json:"external,omitempty"`
	// ClientOnly: the joiner is not manager-capable (serve --manager=false):
	// it becomes an etcd client even while the cluster has room for members.
	ClientOnly bool `json:"clientOnly,omitempty"`
}

// JoinAnswer is the pool's answer to a join.
type JoinAnswer struct {
	Pool string `json:"pool"`
	// CACert is the pool CA certificate (PEM).
	CACert string `json:"caCert"`
	// HostCert is the joiner's host certificate (PEM), issued for its CSR.
	HostCert string `json:"hostCert"`
	// CAKey is the pool CA's key (PEM): only for manager hosts (etcd
	// members), so that any of them can admit hosts and issue certificates.
	CAKey string `json:"caKey,omitempty"`
	// SecretsKey is the key that seals cloud-init user-data (base64), the
	// same on every host.
	SecretsKey string `json:"secretsKey"`
	// Role is member, client or external.
	Role string `json:"role"`
	// MemberID is the joiner's etcd member id (hex), for role member.
	MemberID string `json:"memberID,omitempty"`
	// InitialCluster is etcd's --initial-cluster for the new member.
	InitialCluster string `json:"initialCluster,omitempty"`
	// Endpoints are the voting members' etcd client URLs.
	Endpoints []string `json:"endpoints,omitempty"`
}

// CredentialsRequest asks for a client certificate for a remote CLI
// (POST /api/v1/pool/credentials).
type CredentialsRequest struct {
	// Name is the certificate's common name (a DNS label), the identity the
	// API logs for its requests.
	Name string `json:"name"`
}

// Credentials are a client certificate, its key and the pool CA (PEM).
type Credentials struct {
	CACert string `json:"caCert"`
	Cert   string `json:"cert"`
	Key    string `json:"key"`
}

// PoolInfo describes the pool (GET /api/v1/pool).
type PoolInfo struct {
	Name string `json:"name"`
	// CAFingerprint is the SHA-256 of the pool CA certificate (DER, hex).
	CAFingerprint string       `json:"caFingerprint"`
	Created       time.Time    `json:"created"`
	Members       []PoolMember `json:"members"`
	// Master is the host elected pool master ("" during an election).
	Master string `json:"master,omitempty"`
	// Endpoints of an external etcd cluster (role external).
	External []string `json:"external,omitempty"`
}

// PoolMember is one member of the pool's etcd cluster.
type PoolMember struct {
	Name       string   `json:"name"`
	ID         string   `json:"id"`
	Role       string   `json:"role"` // member or learner
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs,omitempty"`
}
