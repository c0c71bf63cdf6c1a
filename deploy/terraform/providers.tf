# One provider configuration per region: Terraform cannot loop over providers, so each region
# has its own alias, EIP and module block in main.tf.

provider "aws" {
  alias  = "wnam"
  region = var.aws_regions.wnam

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "weu"
  region = var.aws_regions.weu

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "seas"
  region = var.aws_regions.seas

  default_tags {
    tags = var.tags
  }
}
