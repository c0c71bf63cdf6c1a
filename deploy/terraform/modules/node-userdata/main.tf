# Renders a node's config (node.toml) and its cloud-init user data. No provider and no
# resources: tests/deploy-check.sh renders it offline with sample values and checks both
# (`switchyard check`, `cloud-init schema`).

locals {
  deploy_dir = "${path.module}/../../.."

  node_toml = templatefile("${path.module}/../../node.toml.tftpl", {
    node_id       = var.node_id
    region        = var.region
    cluster       = var.cluster
    public_ip     = var.public_ip
    peer_ips      = var.peer_ips
    mesh_port     = var.mesh_port
    status_port   = var.status_port
    mesh_profile  = var.mesh_profile
    drain_timeout = var.drain_timeout_seconds
    geoip         = var.geoip_url != ""
    shared_config = var.shared_config
  })

  cloud_init = templatefile("${path.module}/../../cloud-init.yaml.tftpl", {
    node_id       = var.node_id
    node_toml     = local.node_toml
    ca_cert_pem   = var.ca_cert_pem
    node_cert_pem = var.node_cert_pem
    node_key_pem  = var.node_key_pem
    unit          = file("${local.deploy_dir}/systemd/switchyard.service")
    sysusers      = file("${local.deploy_dir}/systemd/switchyard.sysusers.conf")
    tmpfiles      = file("${local.deploy_dir}/systemd/switchyard.tmpfiles.conf")
    installer     = file("${path.module}/../../switchyard-install.sh")
    binary_url    = var.binary_url
    binary_sha256 = var.binary_sha256
    geoip_url     = var.geoip_url
    geoip_sha256  = var.geoip_sha256
  })
}
