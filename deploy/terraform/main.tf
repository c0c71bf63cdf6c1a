# Switchyard on AWS: one edge node in each of three regions (by default us-west-2 = WNAM,
# eu-central-1 = WEU, ap-southeast-1 = SEAS), meshed over UDP between their Elastic IPs.
#
# The Elastic IPs are made first, on their own, because every node's config and security group
# needs the other nodes' addresses; the instances come after and get their EIP associated.

locals {
  region_codes = {
    wnam = "WNAM"
    weu  = "WEU"
    seas = "SEAS"
  }

  public_ips = {
    wnam = aws_eip.wnam.public_ip
    weu  = aws_eip.weu.public_ip
    seas = aws_eip.seas.public_ip
  }

  # The other two nodes of each node, by node id.
  peers = {
    for k in keys(local.region_codes) : k => {
      for other, ip in local.public_ips : var.node_ids[other] => ip if other != k
    }
  }

  shared_config = file(coalesce(var.shared_config_file, "${path.module}/config/shared.toml"))

  ca_cert_pem = var.ca_cert_pem != "" ? var.ca_cert_pem : file("${var.certs_dir}/ca/ca.crt")
  node_cert_pems = {
    for k, id in var.node_ids : k => (
      contains(keys(var.node_cert_pems), id) ? var.node_cert_pems[id] : file("${var.certs_dir}/${id}.crt")
    )
  }
  node_key_pems = {
    for k, id in var.node_ids : k => sensitive(
      contains(keys(var.node_key_pems), id) ? var.node_key_pems[id] : file("${var.certs_dir}/${id}.key")
    )
  }
}

resource "aws_eip" "wnam" {
  provider = aws.wnam
  domain   = "vpc"
  tags     = { Name = var.node_ids.wnam }
}

resource "aws_eip" "weu" {
  provider = aws.weu
  domain   = "vpc"
  tags     = { Name = var.node_ids.weu }
}

resource "aws_eip" "seas" {
  provider = aws.seas
  domain   = "vpc"
  tags     = { Name = var.node_ids.seas }
}

# Each node's node.toml and cloud-init user data (no provider: rendered locally).
module "userdata" {
  source   = "./modules/node-userdata"
  for_each = local.region_codes

  node_id               = var.node_ids[each.key]
  region                = each.value
  cluster               = var.cluster
  public_ip             = local.public_ips[each.key]
  peer_ips              = values(local.peers[each.key])
  mesh_port             = var.mesh_port
  status_port           = var.status_port
  mesh_profile          = var.mesh_profile
  drain_timeout_seconds = var.drain_timeout_seconds
  shared_config         = local.shared_config
  ca_cert_pem           = local.ca_cert_pem
  node_cert_pem         = local.node_cert_pems[each.key]
  node_key_pem          = local.node_key_pems[each.key]
  binary_url            = var.switchyard_binary_url
  binary_sha256         = var.switchyard_binary_sha256
  geoip_url             = var.geoip_database_url
  geoip_sha256          = var.geoip_database_sha256
}

module "wnam" {
  source    = "./modules/edge-node"
  providers = { aws = aws.wnam }

  name              = var.node_ids.wnam
  region_code       = local.region_codes.wnam
  eip_allocation_id = aws_eip.wnam.allocation_id
  peer_ips          = local.peers.wnam
  extra_mesh_cidrs  = var.extra_mesh_cidrs
  operator_cidrs    = var.operator_cidrs
  app_ports         = var.app_ports
  app_cidrs         = var.app_cidrs
  mesh_port         = var.mesh_port
  status_port       = var.status_port
  instance_type     = var.instance_type
  architecture      = var.architecture
  ami_id            = lookup(var.ami_ids, "wnam", null)
  vpc_id            = lookup(var.vpc_ids, "wnam", null)
  subnet_id         = lookup(var.subnet_ids, "wnam", null)
  ssh_public_key    = var.ssh_public_key
  user_data         = module.userdata["wnam"].cloud_init
}

module "weu" {
  source    = "./modules/edge-node"
  providers = { aws = aws.weu }

  name              = var.node_ids.weu
  region_code       = local.region_codes.weu
  eip_allocation_id = aws_eip.weu.allocation_id
  peer_ips          = local.peers.weu
  extra_mesh_cidrs  = var.extra_mesh_cidrs
  operator_cidrs    = var.operator_cidrs
  app_ports         = var.app_ports
  app_cidrs         = var.app_cidrs
  mesh_port         = var.mesh_port
  status_port       = var.status_port
  instance_type     = var.instance_type
  architecture      = var.architecture
  ami_id            = lookup(var.ami_ids, "weu", null)
  vpc_id            = lookup(var.vpc_ids, "weu", null)
  subnet_id         = lookup(var.subnet_ids, "weu", null)
  ssh_public_key    = var.ssh_public_key
  user_data         = module.userdata["weu"].cloud_init
}

module "seas" {
  source    = "./modules/edge-node"
  providers = { aws = aws.seas }

  name              = var.node_ids.seas
  region_code       = local.region_codes.seas
  eip_allocation_id = aws_eip.seas.allocation_id
  peer_ips          = local.peers.seas
  extra_mesh_cidrs  = var.extra_mesh_cidrs
  operator_cidrs    = var.operator_cidrs
  app_ports         = var.app_ports
  app_cidrs         = var.app_cidrs
  mesh_port         = var.mesh_port
  status_port       = var.status_port
  instance_type     = var.instance_type
  architecture      = var.architecture
  ami_id            = lookup(var.ami_ids, "seas", null)
  vpc_id            = lookup(var.vpc_ids, "seas", null)
  subnet_id         = lookup(var.subnet_ids, "seas", null)
  ssh_public_key    = var.ssh_public_key
  user_data         = module.userdata["seas"].cloud_init
}
