variable "name" {
  description = "The node id; names the instance and its security group."
  type        = string
}

variable "region_code" {
  description = "The node's Switchyard region (WNAM, WEU, SEAS, ...), as a tag."
  type        = string
}

variable "eip_allocation_id" {
  description = "The Elastic IP to associate with the instance (allocated by the caller, so that every node's config can name every other node's address before any instance exists)."
  type        = string
}

variable "peer_ips" {
  description = "The other nodes' public IPs by node id: UDP mesh_port is open to each of them (/32)."
  type        = map(string)
}

variable "extra_mesh_cidrs" {
  description = "More sources allowed to the mesh port."
  type        = list(string)
  default     = []
}

variable "operator_cidrs" {
  description = "Sources allowed to SSH and to the status port."
  type        = list(string)
}

variable "app_ports" {
  description = "TCP ports of the apps, open to app_cidrs."
  type        = list(number)
}

variable "app_cidrs" {
  description = "Sources allowed to the app ports."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "mesh_port" {
  description = "UDP port of the mesh."
  type        = number
  default     = 7946
}

variable "status_port" {
  description = "TCP port of the status endpoint."
  type        = number
  default     = 9900
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
}

variable "architecture" {
  description = "x86_64 or arm64."
  type        = string
  default     = "x86_64"
}

variable "ami_id" {
  description = "AMI to boot; null: the newest official Debian 12 image for the architecture."
  type        = string
  default     = null
}

variable "vpc_id" {
  description = "VPC of the security group; null: the region's default VPC."
  type        = string
  default     = null
}

variable "subnet_id" {
  description = "Public subnet of the instance (in vpc_id); null: the default VPC's default subnet."
  type        = string
  default     = null
}

variable "ssh_public_key" {
  description = "OpenSSH public key for the image's default user; empty: no key pair."
  type        = string
  default     = ""
}

variable "user_data" {
  description = "#cloud-config user data (gzip-compressed here to stay under EC2's 16 KiB limit)."
  type        = string
  sensitive   = true
}
