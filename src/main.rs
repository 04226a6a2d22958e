//! The `seamless` command line. Each subcommand is a thin layer over the library.

mod cli;

#[global_allocator]
static ALLOCATOR: seamless::out_of_memory::NotingAllocator = seamless::out_of_memory::NotingAllocator;

fn main() {
    seamless::profile::mark_start();
    seamless::out_of_memory::install_abort_handler();
    std::process::exit(cli::main());
}
