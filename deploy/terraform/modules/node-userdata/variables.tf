variable "node_id" {
  description = "[node] id; the certificate must be issued for it."
  type        = string
}

variable "region" {
  description = "[node] region: one of the 13 region codes (WNAM, WEU, SEAS, ...)."
  type        = string
}

variable "cluster" {
  description = "[mesh] cluster id."
  type        = string
}

variable "public_ip" {
  description = "The address the other nodes reach this one at ([mesh] advertise)."
  type        = string
}

variable "peer_ips" {
  description = "The other nodes' addresses ([mesh] seeds)."
  type        = list(string)
}

variable "mesh_port" {
  description = "UDP port of the mesh."
  type        = number
  default     = 7946
}

variable "status_port" {
  description = "TCP port of the status endpoint, on all addresses (the firewall limits who reaches it)."
  type        = number
  default     = 9900
}

variable "mesh_profile" {
  description = "lan or wan."
  type        = string
  default     = "wan"
}

variable "drain_timeout_seconds" {
  description = "[node] drain_timeout, in seconds."
  type        = number
  default     = 30
}

variable "shared_config" {
  description = "TOML text with the sections every node shares: [[monitor]], [[pool]], [[load_balancer]], [[app]] (and [[geo.override]] if wanted); no [node], [mesh] or [geo] table."
  type        = string
}

variable "ca_cert_pem" {
  description = "The cluster CA certificate (PEM)."
  type        = string
}

variable "node_cert_pem" {
  description = "This node's certificate (PEM)."
  type        = string
}

variable "node_key_pem" {
  description = "This node's private key (PEM)."
  type        = string
  sensitive   = true
}

variable "binary_url" {
  description = "Where first boot downloads the switchyard binary from; empty: it is copied by hand."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(https://[^\\s]+)?$", var.binary_url))
    error_message = "binary_url is empty or an https:// URL without spaces."
  }
}

variable "binary_sha256" {
  description = "SHA-256 of the binary; empty: not checked."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9a-f]{64})?$", var.binary_sha256))
    error_message = "binary_sha256 is empty or 64 lower-case hex digits."
  }
}

variable "geoip_url" {
  description = "Where first boot downloads the GeoIP database from; empty: no [geo] section."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(https://[^\\s]+)?$", var.geoip_url))
    error_message = "geoip_url is empty or an https:// URL without spaces."
  }
}

variable "geoip_sha256" {
  description = "SHA-256 of the GeoIP database file as downloaded; empty: not checked."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9a-f]{64})?$", var.geoip_sha256))
    error_message = "geoip_sha256 is empty or 64 lower-case hex digits."
  }
}
