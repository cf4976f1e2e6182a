#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

int main() {
    std::string mode;
    std::cin >> mode;
    if (mode == "ok") std::cout << 42 << "\n";
    else if (mode == "wa") std::cout << 41 << "\n";
    else if (mode == "tle") { volatile unsigned long n = 0; for (;;) n++; }
    else if (mode == "mle") {
        std::vector<std::vector<char>> kept;
        for (;;) kept.emplace_back(1 << 20, 1);
    }
    else if (mode == "re") throw std::runtime_error("crash");
    else if (mode == "threads") {
        int a = 0, b = 0;
        std::thread t1([&] { a = 21; }), t2([&] { b = 21; });
        t1.join();
        t2.join();
        std::cout << a + b << "\n";
    }
}
