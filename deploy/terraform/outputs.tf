locals {
  node_ips = {
    for k, id in var.node_ids : id => local.public_ips[k]
  }
}

output "node_ips" {
  description = "Each node's Elastic IP, by node id."
  value       = local.node_ips
}

output "status_urls" {
  description = "Each node's status document (reachable from operator_cidrs only)."
  value       = { for id, ip in local.node_ips : id => "http://${ip}:${var.status_port}/v1/status" }
}

output "status_commands" {
  description = "The command that shows a node's status, members and origin health."
  value       = { for id, ip in local.node_ips : id => "switchyard status --addr ${ip}:${var.status_port}" }
}

output "app_endpoints" {
  description = "Where clients connect, by node id."
  value       = { for id, ip in local.node_ips : id => [for p in var.app_ports : "${ip}:${p}"] }
}

output "ssh_commands" {
  description = "SSH to each node (Debian's default user is admin; needs ssh_public_key)."
  value       = { for id, ip in local.node_ips : id => "ssh admin@${ip}" }
}

output "instance_ids" {
  description = "EC2 instance ids, by node id."
  value = {
    (var.node_ids.wnam) = module.wnam.instance_id
    (var.node_ids.weu)  = module.weu.instance_id
    (var.node_ids.seas) = module.seas.instance_id
  }
}

output "node_configs" {
  description = "The node.toml written to each node (no secrets in it)."
  value       = { for k, id in var.node_ids : id => module.userdata[k].node_toml }
}
