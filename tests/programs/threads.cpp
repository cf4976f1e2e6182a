// Benign: std::thread workers and a std::mutex; prints the total.
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

int main()
{
    std::mutex m;
    long total = 0;
    std::vector<std::thread> workers;
    for (int i = 1; i <= 4; i++)
        workers.emplace_back([&, i] {
            std::lock_guard<std::mutex> g(m);
            total += i;
        });
    for (auto &w : workers)
        w.join();
    std::cout << "cpp threads: " << total << std::endl;
    return 0;
}
