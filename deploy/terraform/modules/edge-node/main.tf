# One Switchyard node in one AWS region: a security group, an instance booted with cloud-init,
# and the association of the caller's Elastic IP.

data "aws_vpc" "default" {
  count   = var.vpc_id == null ? 1 : 0
  default = true
}

data "aws_ami" "debian" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"] # Debian's official images

  filter {
    name   = "name"
    values = ["debian-12-${var.architecture == "arm64" ? "arm64" : "amd64"}-*"]
  }

  filter {
    name   = "architecture"
    values = [var.architecture]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  vpc_id = var.vpc_id != null ? var.vpc_id : data.aws_vpc.default[0].id
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.debian[0].id

  # Keys are known at plan time (ports, node ids, CIDRs), even while the peers' addresses
  # are not yet allocated.
  ingress = merge(
    {
      for pair in setproduct(var.app_ports, var.app_cidrs) :
      "app-${pair[0]}-${pair[1]}" => {
        protocol    = "tcp"
        port        = pair[0]
        cidr        = pair[1]
        description = "Switchyard app port ${pair[0]}"
      }
    },
    {
      for id, ip in var.peer_ips : "mesh-${id}" => {
        protocol    = "udp"
        port        = var.mesh_port
        cidr        = "${ip}/32"
        description = "Switchyard mesh (QUIC) from ${id}"
      }
    },
    {
      for cidr in var.extra_mesh_cidrs : "mesh-${cidr}" => {
        protocol    = "udp"
        port        = var.mesh_port
        cidr        = cidr
        description = "Switchyard mesh (QUIC) from an extra member"
      }
    },
    {
      for cidr in var.operator_cidrs : "status-${cidr}" => {
        protocol    = "tcp"
        port        = var.status_port
        cidr        = cidr
        description = "Switchyard status endpoint, operator only"
      }
    },
    {
      for cidr in var.operator_cidrs : "ssh-${cidr}" => {
        protocol    = "tcp"
        port        = 22
        cidr        = cidr
        description = "SSH, operator only"
      }
    },
  )
}

resource "aws_security_group" "node" {
  name_prefix = "${var.name}-"
  description = "Switchyard node ${var.name}: apps to the world, mesh from the other nodes, SSH and status from the operator"
  vpc_id      = local.vpc_id
  tags        = { Name = var.name }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "node" {
  for_each = local.ingress

  security_group_id = aws_security_group.node.id
  description       = each.value.description
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}

# Out: origins and monitors (any port), the other nodes (UDP), package and binary downloads.
resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.node.id
  description       = "Origins, peers, downloads"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_key_pair" "operator" {
  count           = var.ssh_public_key == "" ? 0 : 1
  key_name_prefix = "${var.name}-"
  public_key      = var.ssh_public_key
}

resource "aws_instance" "node" {
  ami                         = local.ami_id
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_id
  vpc_security_group_ids      = [aws_security_group.node.id]
  key_name                    = one(aws_key_pair.operator[*].key_name)
  user_data_base64            = base64gzip(var.user_data)
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 8
    encrypted   = true
  }

  tags = {
    Name                = var.name
    "switchyard:node"   = var.name
    "switchyard:region" = var.region_code
  }

  lifecycle {
    precondition {
      # EC2 takes at most 16 KiB of user data (before base64); a big shared config can pass it.
      condition     = length(base64gzip(var.user_data)) <= 21844
      error_message = "The gzip-compressed user data of ${var.name} is over EC2's 16 KiB limit: shorten the shared config."
    }
    # A newer Debian image must not replace a running node; replace it deliberately
    # (terraform apply -replace=module.NAME.aws_instance.node).
    ignore_changes = [ami]
  }
}

resource "aws_eip_association" "node" {
  instance_id   = aws_instance.node.id
  allocation_id = var.eip_allocation_id
}
