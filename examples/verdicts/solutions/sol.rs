use std::io::Read;
use std::thread;

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    match input.trim() {
        "ok" => println!("42"),
        "wa" => println!("41"),
        "tle" => loop {},
        "mle" => {
            let mut kept: Vec<Vec<u8>> = Vec::new();
            loop {
                kept.push(vec![1u8; 1 << 20]);
            }
        }
        "re" => panic!("crash"),
        "threads" => {
            let a = thread::spawn(|| 21);
            let b = thread::spawn(|| 21);
            println!("{}", a.join().unwrap() + b.join().unwrap());
        }
        _ => std::process::exit(3),
    }
}
