# ---- where ------------------------------------------------------------------------------------

variable "aws_regions" {
  description = "The AWS region of each Switchyard region's node: wnam (WNAM), weu (WEU) and seas (SEAS)."
  type = object({
    wnam = string
    weu  = string
    seas = string
  })
  default = {
    wnam = "us-west-2"
    weu  = "eu-central-1"
    seas = "ap-southeast-1"
  }
}

variable "node_ids" {
  description = "The [node] id of each node; each needs a certificate issued for that id and its region (switchyard cert issue --node ID --region WNAM|WEU|SEAS)."
  type = object({
    wnam = string
    weu  = string
    seas = string
  })
  default = {
    wnam = "edge-wnam"
    weu  = "edge-weu"
    seas = "edge-seas"
  }

  validation {
    condition     = alltrue([for id in values(var.node_ids) : can(regex("^[A-Za-z0-9._-]{1,64}$", id))])
    error_message = "Node ids are 1-64 characters of letters, digits, '.', '_' or '-'."
  }
}

variable "vpc_ids" {
  description = "Optional VPC per region key (wnam, weu, seas); the region's default VPC when absent. Set subnet_ids for the same keys."
  type        = map(string)
  default     = {}
}

variable "subnet_ids" {
  description = "Optional public subnet per region key (wnam, weu, seas), in the VPC of vpc_ids; the default VPC's default subnet when absent."
  type        = map(string)
  default     = {}
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default = {
    Project = "switchyard"
  }
}

# ---- who may reach what -----------------------------------------------------------------------

variable "operator_cidrs" {
  description = "Where the operator connects from: SSH (22/tcp) and the status endpoint (status_port/tcp) are open to these CIDRs only, e.g. [\"198.51.100.7/32\"]."
  type        = list(string)

  validation {
    condition     = length(var.operator_cidrs) > 0 && alltrue([for c in var.operator_cidrs : can(cidrhost(c, 0))])
    error_message = "operator_cidrs must be a non-empty list of CIDR blocks such as 198.51.100.7/32."
  }
  validation {
    condition     = !contains(var.operator_cidrs, "0.0.0.0/0")
    error_message = "operator_cidrs must not be 0.0.0.0/0: SSH and the status endpoint would be open to everyone."
  }
}

variable "app_ports" {
  description = "TCP ports of the [[app]] listeners in the shared config; open to app_cidrs."
  type        = list(number)
  default     = [443]

  validation {
    condition     = alltrue([for p in var.app_ports : p >= 1 && p <= 65535 && floor(p) == p])
    error_message = "app_ports are TCP port numbers, 1 to 65535."
  }
}

variable "app_cidrs" {
  description = "Who may connect to the apps."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = alltrue([for c in var.app_cidrs : can(cidrhost(c, 0))])
    error_message = "app_cidrs must be CIDR blocks."
  }
}

variable "extra_mesh_cidrs" {
  description = "More sources allowed to the mesh port (UDP) besides the three nodes' Elastic IPs, e.g. nodes run outside this configuration."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.extra_mesh_cidrs : can(cidrhost(c, 0))])
    error_message = "extra_mesh_cidrs must be CIDR blocks."
  }
}

variable "mesh_port" {
  description = "UDP port of the mesh (QUIC)."
  type        = number
  default     = 7946
}

variable "status_port" {
  description = "TCP port of the status endpoint (status_listen = 0.0.0.0:PORT)."
  type        = number
  default     = 9900
}

# ---- the instances ----------------------------------------------------------------------------

variable "instance_type" {
  description = "EC2 instance type of every node."
  type        = string
  default     = "t3.small"
}

variable "architecture" {
  description = "CPU architecture of the instances and of the switchyard binary: x86_64 or arm64 (e.g. with instance_type = \"t4g.small\")."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture is x86_64 or arm64."
  }
}

variable "ami_ids" {
  description = "Optional AMI per region key (wnam, weu, seas); the newest official Debian 12 image when absent."
  type        = map(string)
  default     = {}
}

variable "ssh_public_key" {
  description = "An OpenSSH public key for the image's default user (admin on Debian); empty: no key pair (use EC2 Instance Connect or SSM)."
  type        = string
  default     = ""
}

# ---- what runs on them ------------------------------------------------------------------------

variable "cluster" {
  description = "[mesh] cluster id; the CA should be made with the same name (switchyard ca init --cluster NAME)."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.cluster))
    error_message = "cluster is 1-64 characters of letters, digits, '.', '_' or '-'."
  }
}

variable "mesh_profile" {
  description = "SWIM timings: wan (regions apart) or lan."
  type        = string
  default     = "wan"

  validation {
    condition     = contains(["lan", "wan"], var.mesh_profile)
    error_message = "mesh_profile is lan or wan."
  }
}

variable "drain_timeout_seconds" {
  description = "[node] drain_timeout: how long a stopping node waits for open connections. The systemd unit's TimeoutStopSec (45s) must stay above it."
  type        = number
  default     = 30

  validation {
    condition     = var.drain_timeout_seconds >= 0 && var.drain_timeout_seconds <= 40
    error_message = "drain_timeout_seconds must be 0 to 40, below the unit's TimeoutStopSec=45 (raise both together)."
  }
}

variable "shared_config_file" {
  description = "TOML with the [[monitor]], [[pool]], [[load_balancer]] and [[app]] sections every node shares (no [node], [mesh] or [geo] table: those are generated). Default: config/shared.toml beside this file."
  type        = string
  default     = null
}

variable "certs_dir" {
  description = "Where `switchyard ca init --out DIR/ca` and `switchyard cert issue --ca DIR/ca --region REGION --out DIR` wrote: DIR/ca/ca.crt and DIR/NODE_ID.crt, DIR/NODE_ID.key. Relative paths are from the working directory. Not read for what ca_cert_pem, node_cert_pems and node_key_pems give."
  type        = string
  default     = "certs"
}

variable "ca_cert_pem" {
  description = "The cluster CA certificate (PEM), instead of reading certs_dir/ca/ca.crt."
  type        = string
  default     = ""
}

variable "node_cert_pems" {
  description = "Node certificates (PEM) by node id, instead of reading certs_dir/NODE_ID.crt."
  type        = map(string)
  default     = {}
}

variable "node_key_pems" {
  description = "Node private keys (PEM) by node id, instead of reading certs_dir/NODE_ID.key."
  type        = map(string)
  default     = {}
  sensitive   = true
}

variable "switchyard_binary_url" {
  description = "HTTPS URL of the switchyard binary (Linux, the instances' architecture), downloaded at first boot, e.g. a release asset or a presigned S3 URL. Empty: copy it to /usr/local/bin/switchyard yourself and run `sudo switchyard-install`."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(https://[^\\s]+)?$", var.switchyard_binary_url))
    error_message = "switchyard_binary_url is empty or an https:// URL without spaces."
  }
}

variable "switchyard_binary_sha256" {
  description = "SHA-256 of the binary at switchyard_binary_url (sha256sum); checked before it is installed. Strongly recommended."
  type        = string
  default     = ""

  validation {
    condition     = var.switchyard_binary_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.switchyard_binary_sha256))
    error_message = "switchyard_binary_sha256 is 64 lower-case hex digits."
  }
}

variable "geoip_database_url" {
  description = "URL of a MaxMind-format GeoIP database (.mmdb, or .mmdb.gz) downloaded at first boot to /var/lib/switchyard/geo.mmdb, e.g. DB-IP lite country. Empty: no [geo] section; every client is taken to be in its node's region."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(https://[^\\s]+)?$", var.geoip_database_url))
    error_message = "geoip_database_url is empty or an https:// URL without spaces."
  }
}

variable "geoip_database_sha256" {
  description = "SHA-256 of the file at geoip_database_url (as downloaded); checked when set."
  type        = string
  default     = ""

  validation {
    condition     = var.geoip_database_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.geoip_database_sha256))
    error_message = "geoip_database_sha256 is 64 lower-case hex digits."
  }
}
